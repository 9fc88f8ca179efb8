"""`tether mfa enroll|confirm`: set up the second factor (TOTP) for the logged-in user."""

import io
from typing import Annotated

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json

mfa_app = typer.Typer(help="Your second factor (TOTP authenticator app).", no_args_is_help=True)


def terminal_qr(uri: str) -> str:
    """The URI as a QR code drawn with block characters, for scanning off the terminal."""
    try:
        # The `cli` extra: an agent-only install has no QR code library (docs/adr/0042).
        import segno
    except ImportError:
        return "(Install tether[cli] to see a QR code here; enter the secret below instead.)\n"
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


@mfa_app.command("enroll")
def enroll(
    enrollment_code: Annotated[
        str | None,
        typer.Option(
            "--enrollment-code",
            help="The one-time code an admin issued you ('tether user enrollment-code').",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start enrollment: prints the secret, the otpauth:// URI and a QR code to scan. Running
    it again from the same login shows the same secret until you confirm or cancel."""
    body = {"enrollment_code": enrollment_code.strip()} if enrollment_code else {}
    started = Api.from_profile().post("/auth/mfa/enroll", json=body)
    if json_output:
        emit_json(started)
        return
    console.print(terminal_qr(started["uri"]), markup=False, highlight=False)
    console.print(f"Secret: {started['secret']}", markup=False)
    console.print(f"URI:    {started['uri']}", markup=False)
    console.print(
        "Scan the code or type the secret into your authenticator app, then run "
        "'tether mfa confirm --code CODE' with the code it shows.",
        markup=False,
    )


@mfa_app.command("cancel")
def cancel() -> None:
    """Forget the enrollment you started (a new one needs a new enrollment code)."""
    Api.from_profile().post("/auth/mfa/cancel")
    console.print("Enrollment cancelled.")


@mfa_app.command("confirm")
def confirm(
    code: Annotated[str, typer.Option(help="The 6-digit code the app shows now.")],
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Finish enrollment with a code; prints the one-time recovery codes (shown once)."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        raise CliError("An authentication code is the 6 digits your authenticator app shows.")
    answer = Api.from_profile().post("/auth/mfa/confirm", json={"code": code})
    if json_output:
        emit_json(answer)
        return
    console.print("Second factor enabled. Recovery codes (each works once; shown once):")
    for recovery in answer["recovery_codes"]:
        console.print(f"  {recovery}", markup=False)
