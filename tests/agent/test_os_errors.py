"""Windows' reasons for refusing a file, told apart by their error number (set by hand here:
Python sets `winerror` only on Windows)."""

import pytest

from tether.agent.os_errors import windows_sentence

WHERE = r"C:\Windows\System32\config\SAM"


def error(kind: type[OSError], winerror: int | None) -> OSError:
    exc = kind(13 if kind is PermissionError else 2, "refused")
    if winerror is not None:
        exc.winerror = winerror  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize("code", [32, 33])
def test_a_locked_file_is_told_from_a_denied_one(code: int) -> None:
    assert windows_sentence(error(PermissionError, code), WHERE, WHERE, windows=True) == (
        f"{WHERE} is locked by another process on the endpoint, so the agent cannot read it "
        "now; try again later, or collect it from a volume shadow copy."
    )
    assert windows_sentence(error(PermissionError, 5), WHERE, WHERE, windows=True) == (
        f"Windows denied the agent access to {WHERE} (its access control list)."
    )


def test_a_path_over_260_characters_says_so() -> None:
    long = "C:\\" + "\\".join(["folder" * 10] * 5) + "\\evil.dll"
    assert len(long) > 260
    expected = (
        f"{long} is {len(long)} characters long, more than Windows allows without long path "
        "support (259); enable LongPathsEnabled on the endpoint or give a shorter path."
    )
    assert windows_sentence(error(FileNotFoundError, 206), long, long, windows=True) == expected
    assert windows_sentence(error(FileNotFoundError, 3), long, long, windows=True) == expected
    # A short path that is missing is just missing; so is a long one through \\?\.
    assert windows_sentence(error(FileNotFoundError, 3), WHERE, WHERE, windows=True) is None
    verbatim = "\\\\?\\" + long
    assert windows_sentence(error(FileNotFoundError, 3), verbatim, verbatim, windows=True) is None


def test_other_systems_keep_their_sentences() -> None:
    assert windows_sentence(error(PermissionError, 32), WHERE, WHERE, windows=False) is None
    assert windows_sentence(error(PermissionError, None), WHERE, WHERE, windows=True) is None
