"""A stand-in for powershell.exe on the Linux test host: how errors travel, not Windows.

It reads the script given with `-File`, walks the statements of its `try` block one by one,
and for each NetSecurity cmdlet does what Windows PowerShell documents: a cmdlet named in
FAKE_PS_FAIL fails, and its error stops the script (the `catch`, exit 1) only when that call
carries `-ErrorAction Stop`; otherwise the error is written and the next statement runs (the
CDXML functions ignore `$ErrorActionPreference`, PowerShell issues 4568 and 24389). A call to
the script's `Get-TetherRules` is a call to the `Get-NetFirewallRule` inside it.

Environment:
- FAKE_PS_FAIL: the cmdlet that fails (e.g. New-NetFirewallRule), or nothing;
- FAKE_PS_LOG: a file that gets each statement run, one per line;
- FAKE_PS_ENFORCEMENT: the JSON the enforcement line carries;
- FAKE_PS_RULES: what Get-TetherRules counts (default 0); FAKE_PS_LEFT: rules left after a
  removal (default 0); FAKE_PS_LISTING: the listing's rule lines, separated by ";".
"""

import os
import re
import sys
from pathlib import Path

CMDLET = re.compile(r"\b(?:New|Get|Remove|Set)-Net\w+|\bGet-TetherRules\b")


def stops(segment: str) -> bool:
    return "-ErrorAction Stop" in segment


def fail(message: str) -> None:
    # The script's catch: the message on stderr, exit 1.
    print(message, file=sys.stderr)
    sys.exit(1)


def main() -> None:
    text = Path(sys.argv[sys.argv.index("-File") + 1]).read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if lines[0] != "$ErrorActionPreference = 'Stop'" or lines[-1] != "exit 0":
        fail("fake: not a script the agent generates")
    inner = next(line for line in lines if "Get-NetFirewallRule -PolicyStore $Store" in line)
    body = lines[lines.index("try {") + 1 : lines.index("} catch {")]
    failing = os.environ.get("FAKE_PS_FAIL", "")
    log = os.environ.get("FAKE_PS_LOG")
    for statement in body:
        statement = statement.strip()
        if log:
            with open(log, "a", encoding="utf-8") as file:
                file.write(statement + "\n")
        for segment in statement.split(" | "):
            for cmdlet in CMDLET.findall(segment):
                called, how = (
                    ("Get-NetFirewallRule", inner)
                    if cmdlet == "Get-TetherRules"
                    else (cmdlet, segment)
                )
                if called == failing:
                    message = f"{called}: The RPC server is unavailable."
                    if stops(how):
                        fail(message)
                    print(message, file=sys.stderr)  # non-terminating: the script goes on
        if statement.startswith("'TetherEnforcement "):
            print("TetherEnforcement " + os.environ.get("FAKE_PS_ENFORCEMENT", ""))
        elif statement.startswith("Get-TetherRules | Sort-Object Name"):
            for line in os.environ.get("FAKE_PS_LISTING", "").split(";"):
                if line:
                    print(line)
        elif statement == "@(Get-TetherRules).Count":
            print(os.environ.get("FAKE_PS_RULES", "0"))
        elif (
            statement.startswith("if ($left -ne 0)") and os.environ.get("FAKE_PS_LEFT", "0") != "0"
        ):
            fail(
                f"{os.environ['FAKE_PS_LEFT']} isolation rules are still there after removing them."
            )
    sys.exit(0)


if __name__ == "__main__":
    main()
