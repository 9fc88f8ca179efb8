"""Windows' own programs by their full path, and their output decoded as they write it.

Windows looks for a program started by bare name in the starting program's folder and in the
current directory before the system folders, so `powershell.exe` could be whatever someone put
there; the agent names every native tool by its full path under the system directory (asked of
Windows, not read from an environment variable). Console tools write their output in the OEM
code page (437, 850, 866...), not UTF-8 nor the ANSI page, so an error message with an accent
is decoded with that page.

Importable and typed everywhere; elsewhere than Windows the paths are those of a default
install, for tests and messages only.
"""

import sys
from pathlib import PureWindowsPath

_DEFAULT_SYSTEM_DIRECTORY = r"C:\Windows\System32"
_MAX_PATH = 260


def system_directory() -> PureWindowsPath:
    """The System32 folder, as `GetSystemDirectoryW` gives it."""
    if sys.platform == "win32":
        import ctypes

        buffer = ctypes.create_unicode_buffer(_MAX_PATH)
        length = ctypes.windll.kernel32.GetSystemDirectoryW(buffer, _MAX_PATH)
        if 0 < length < _MAX_PATH:
            return PureWindowsPath(buffer.value)
    return PureWindowsPath(_DEFAULT_SYSTEM_DIRECTORY)


def system_program(*parts: str) -> str:
    """The full path of a program below System32, e.g. `system_program("sc.exe")`."""
    return str(system_directory().joinpath(*parts))


def powershell_path() -> str:
    """Windows PowerShell 5.1, which every supported Windows has and whose NetSecurity
    module the isolation scripts use."""
    return system_program("WindowsPowerShell", "v1.0", "powershell.exe")


def oem_encoding() -> str:
    """The codec of the console's OEM code page (what native tools write to a pipe)."""
    if sys.platform == "win32":
        import ctypes

        page = int(ctypes.windll.kernel32.GetOEMCP())
        return f"cp{page}"
    return "utf-8"


def decode_native(data: bytes, encoding: str | None = None) -> str:
    """Output of a native tool as text; bytes the code page lacks become U+FFFD, never an error."""
    codec = encoding or oem_encoding()
    try:
        return data.decode(codec, errors="replace")
    except LookupError:
        # A code page Python has no codec for: the ASCII part is still readable.
        return data.decode("ascii", errors="replace")
