"""Owner and DACL decisions for the Windows state directory, over SDDL as Windows writes it.

Nothing here calls Windows: the Win32 reads and the creation run on a Windows endpoint only
(the first-VM checklist in docs/operations.md); these tests pin what the agent decides.
"""

from pathlib import Path, PureWindowsPath

import pytest

from tether.agent import state_guard, windows_acl
from tether.agent.windows_acl import (
    ADMINISTRATORS,
    PRIVATE_SDDL,
    PRIVATE_SDDL_ADMIN_OWNER,
    SYSTEM,
    TRUSTED_INSTALLER,
    UnreadableSddl,
    check_tree,
    parse_sddl,
)

ROOT = PureWindowsPath(r"C:\ProgramData\Tether\agent")
USER = "S-1-5-21-1004336348-1177238915-682003330-1001"
# As `icacls` shows them on Windows 10/11, written as SDDL.
DRIVE = (
    f"O:{TRUSTED_INSTALLER}G:{TRUSTED_INSTALLER}D:PAI(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)"
    "(A;OICI;0x1200a9;;;BU)(A;OICIIO;SDGXGWGR;;;AU)(A;;LC;;;AU)"
)
PROGRAM_DATA = (
    "O:SYG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICIIO;GA;;;CO)(A;OICI;0x1200a9;;;BU)"
    "(A;CI;DCLCRPCR;;;BU)"
)
# %ProgramData%\Tether made by the agent: the same private DACL as the state directory.
TETHER = PRIVATE_SDDL


def tree(**overrides: str | None) -> dict[PureWindowsPath, str | None]:
    sddl: dict[PureWindowsPath, str | None] = {
        PureWindowsPath("C:\\"): DRIVE,
        PureWindowsPath(r"C:\ProgramData"): PROGRAM_DATA,
        PureWindowsPath(r"C:\ProgramData\Tether"): TETHER,
        ROOT: PRIVATE_SDDL,
    }
    for name, value in overrides.items():
        sddl[{"tether": PureWindowsPath(r"C:\ProgramData\Tether"), "root": ROOT}[name]] = value
    return sddl


def check(sddl: dict[PureWindowsPath, str | None]) -> str | None:
    return check_tree(ROOT, lambda folder: sddl[PureWindowsPath(folder)])


def test_what_the_agent_creates_is_accepted_under_a_stock_program_data() -> None:
    assert check(tree()) is None
    assert check(tree(root=PRIVATE_SDDL_ADMIN_OWNER)) is None
    parsed = parse_sddl(PRIVATE_SDDL)
    assert parsed.owner == SYSTEM
    assert parsed.protected
    assert {ace.sid for ace in parsed.aces} == {SYSTEM, ADMINISTRATORS}
    # Checked before it exists (enrollment): only the folders above are read.
    assert check(tree(root=None, tether=None)) is None


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (
            # A standard user made it first (%ProgramData% lets Users create folders).
            {"root": f"O:{USER}G:{USER}D:PAI(A;OICI;FA;;;{USER})(A;OICI;FA;;;SY)"},
            f"The state directory {ROOT} belongs to {USER}, not SYSTEM or Administrators, so "
            "the agent refuses it; remove it or choose another --state-dir.",
        ),
        (
            # Made by hand without removing inheritance: Users may read the private key.
            {"root": "O:BAG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIID;0x1200a9;;;BU)"},
            f"The state directory {ROOT} lets Users (S-1-5-32-545) in, so the agent refuses "
            "it; remove it or choose another --state-dir.",
        ),
        (
            {"root": "O:SYG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)"},
            f"The state directory {ROOT} inherits its permissions from the folder above (its "
            "access control list is not protected), so the agent refuses it; remove it or "
            "choose another --state-dir.",
        ),
        (
            {"root": "O:SYG:SYD:NO_ACCESS_CONTROL"},
            f"The state directory {ROOT} has no access control list (anyone may use it), so "
            "the agent refuses it; remove it or choose another --state-dir.",
        ),
        (
            {"root": "O:SYG:SY"},
            f"The state directory {ROOT} has no access control list (anyone may use it), so "
            "the agent refuses it; remove it or choose another --state-dir.",
        ),
        (
            # Everyone may only read, inherit-only: still a way to the key files inside.
            {"root": "O:SYG:SYD:P(A;OICI;FA;;;SY)(A;OICIIO;FR;;;WD)"},
            f"The state directory {ROOT} lets Everyone (S-1-1-0) in, so the agent refuses it; "
            "remove it or choose another --state-dir.",
        ),
        (
            {"tether": f"O:{USER}G:{USER}D:P(A;OICI;FA;;;SY)"},
            f"C:\\ProgramData\\Tether, a parent of the state directory {ROOT}, belongs to "
            f"{USER}, so the agent refuses it; choose another --state-dir.",
        ),
        (
            # Users may delete what the folder holds: move the state directory away, make their own.
            {"tether": "O:SYG:SYD:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;;0x1200e9;;;BU)"},
            f"C:\\ProgramData\\Tether, a parent of the state directory {ROOT}, lets Users "
            "(S-1-5-32-545) rename or re-permission what is in it, so the agent refuses it; "
            "choose another --state-dir.",
        ),
        (
            {"tether": "O:SYG:SYD:P(A;OICI;FA;;;SY)(A;;WD;;;AU)"},
            f"C:\\ProgramData\\Tether, a parent of the state directory {ROOT}, lets "
            "Authenticated Users (S-1-5-11) rename",
        ),
        (
            {"tether": "O:SYG:SYD:P(A;OICI;FA;;;SY)(A;OICI;Xz;;;BU)"},
            "The agent could not read the permissions of C:\\ProgramData\\Tether",
        ),
    ],
)
def test_what_another_account_could_use_is_refused(
    overrides: dict[str, str], sentence: str
) -> None:
    problem = check(tree(**overrides))
    assert problem is not None
    assert problem.startswith(sentence), problem
    assert problem.endswith("--state-dir.") or problem.endswith("the state directory.")


def test_a_deny_entry_for_others_is_fine() -> None:
    assert check(tree(root=f"O:SYG:SYD:P(D;OICI;FA;;;{USER})(A;OICI;FA;;;SY)")) is None


@pytest.mark.parametrize(
    "text", ["", "D:P(A;;FA;;;SY)", "O:SYD:P(A;;FA;;SY)", "O:SYD:P(A;;QQ;;;SY)"]
)
def test_unreadable_sddl_is_an_error(text: str) -> None:
    with pytest.raises(UnreadableSddl):
        parse_sddl(text)


def test_every_missing_folder_is_created_with_the_private_acl_top_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creation order of `state_guard._create_windows` (the Win32 call is replaced)."""
    created: list[Path] = []

    def create(folder: Path) -> None:
        created.append(folder)
        folder.mkdir()

    monkeypatch.setattr(windows_acl, "create_private_dir", create)
    root = tmp_path / "ProgramData" / "Tether" / "agent"
    state_guard._create_windows(root)
    assert created == [tmp_path / "ProgramData", root.parent, root]
    created.clear()
    state_guard._create_windows(root)  # nothing missing: nothing made
    assert created == []


def test_a_creation_windows_refuses_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(folder: Path) -> None:
        raise OSError(5, "Access is denied")

    monkeypatch.setattr(windows_acl, "create_private_dir", refuse)
    with pytest.raises(state_guard.UnsafeStateDir) as caught:
        state_guard._create_windows(tmp_path / "agent")
    assert str(caught.value) == (
        f"The agent could not create {tmp_path / 'agent'} with its own permissions (Access is "
        "denied); choose another --state-dir."
    )
