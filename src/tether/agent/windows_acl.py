"""Windows: who owns the agent's state directory and who may use it, read and decided.

The agent creates its state directory itself with an explicit owner and a protected DACL
granting SYSTEM and Administrators only (`PRIVATE_SDDL`, through `CreateDirectoryW` with that
security descriptor, so there is no moment with another ACL), and at every start reads the
owner and DACL of the directory and of every folder above it as SDDL and decides here:

- the directory: owned by SYSTEM or Administrators; a DACL that is present, protected from
  inheritance, and allows nobody else anything (a deny entry is fine);
- each folder above: owned by SYSTEM, Administrators or TrustedInstaller, and nobody else may
  delete, rename, re-own or re-permission it, nor delete what is in it (creating siblings, as
  Users may in `%ProgramData%`, is harmless).

Anything else is refused in one sentence, never repaired (docs/adr/0041): a directory another
account made first may hold what it planted. The decisions are plain functions over SDDL text,
tested on Linux; the Win32 calls sit behind `sys.platform == "win32"` and run on Windows only.
"""

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

SYSTEM, ADMINISTRATORS = "S-1-5-18", "S-1-5-32-544"
TRUSTED_INSTALLER = "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
# SYSTEM and Administrators full control, for this folder and (OI, CI) what it holds; P keeps
# %ProgramData%'s inherited entries (Users may read) out.
PRIVATE_DACL = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
PRIVATE_SDDL = f"O:SYG:SY{PRIVATE_DACL}"
# When the creator is an elevated administrator rather than SYSTEM, Windows lets it own an
# object as Administrators but not as SYSTEM (ERROR_INVALID_OWNER).
PRIVATE_SDDL_ADMIN_OWNER = f"O:BAG:SY{PRIVATE_DACL}"

# SDDL's two-letter names for the accounts a message may name (MS-DTYP 2.5.1.1).
_ALIASES = {
    "SY": SYSTEM,
    "BA": ADMINISTRATORS,
    "BU": "S-1-5-32-545",
    "AU": "S-1-5-11",
    "WD": "S-1-1-0",
    "CO": "S-1-3-0",
    "OW": "S-1-3-4",
    "IU": "S-1-5-4",
    "NS": "S-1-5-20",
    "LS": "S-1-5-19",
    "PU": "S-1-5-32-547",
    "BG": "S-1-5-32-546",
}
_NAMES = {
    SYSTEM: "SYSTEM",
    ADMINISTRATORS: "Administrators",
    TRUSTED_INSTALLER: "TrustedInstaller",
    "S-1-5-32-545": "Users",
    "S-1-5-11": "Authenticated Users",
    "S-1-1-0": "Everyone",
    "S-1-3-0": "CREATOR OWNER",
    "S-1-3-4": "OWNER RIGHTS",
    "S-1-5-4": "INTERACTIVE",
}
# Access-mask letters (MS-DTYP 2.5.1.1): generic, standard, file, and the directory-service
# names SDDL prints for the low sixteen bits.
_RIGHTS = {
    "GA": 0x10000000,
    "GX": 0x20000000,
    "GW": 0x40000000,
    "GR": 0x80000000,
    "SD": 0x00010000,
    "RC": 0x00020000,
    "WD": 0x00040000,
    "WO": 0x00080000,
    "FA": 0x001F01FF,
    "FR": 0x00120089,
    "FW": 0x00120116,
    "FX": 0x001200A0,
    "CC": 0x1,
    "DC": 0x2,
    "LC": 0x4,
    "SW": 0x8,
    "RP": 0x10,
    "WP": 0x20,
    "DT": 0x40,
    "LO": 0x80,
    "CR": 0x100,
}
_DELETE_CHILD, _DELETE, _WRITE_DAC, _WRITE_OWNER = 0x40, 0x10000, 0x40000, 0x80000
_GENERIC_ALL = 0x10000000
# What another account may not hold on a folder above the state directory: each lets it move
# the directory away (or take the folder over) and put its own in its place.
_TAKEOVER = _DELETE_CHILD | _DELETE | _WRITE_DAC | _WRITE_OWNER | _GENERIC_ALL
_DENY_TYPES = frozenset({"D", "OD", "XD"})
_PART = re.compile(r"([OGDS]):")


class UnreadableSddl(ValueError):
    """Text that is not the SDDL Windows writes for a file's owner and DACL."""


@dataclass(frozen=True)
class Ace:
    """One access control entry: allow or deny, its flags, the rights, whom it names."""

    deny: bool
    flags: str
    mask: int
    sid: str

    @property
    def inherit_only(self) -> bool:
        """Whether it applies only to what the folder holds, not to the folder itself."""
        return "IO" in [self.flags[i : i + 2] for i in range(0, len(self.flags), 2)]


@dataclass(frozen=True)
class Security:
    """A file's owner and DACL, as read from its SDDL."""

    owner: str
    dacl_present: bool
    protected: bool
    aces: tuple[Ace, ...]


def sid_of(text: str) -> str:
    """A SID in S-1-... form from an SDDL alias or SID."""
    return _ALIASES.get(text, text)


def account(sid: str) -> str:
    """A SID as a message shows it: a name where it is well known, with the SID."""
    name = _NAMES.get(sid)
    return f"{name} ({sid})" if name and sid not in (SYSTEM, ADMINISTRATORS) else (name or sid)


def _mask(text: str) -> int:
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError as exc:
            raise UnreadableSddl(f"bad access mask {text}") from exc
    if len(text) % 2:
        raise UnreadableSddl(f"bad access rights {text}")
    mask = 0
    for i in range(0, len(text), 2):
        letters = text[i : i + 2]
        if letters not in _RIGHTS:
            raise UnreadableSddl(f"unknown right {letters}")
        mask |= _RIGHTS[letters]
    return mask


def _aces(text: str) -> tuple[str, tuple[Ace, ...]]:
    """The DACL's flags (before the first entry) and its entries."""
    flags, _, rest = text.partition("(")
    entries = []
    for raw in re.findall(r"\(([^()]*)\)", "(" + rest if rest else ""):
        fields = raw.split(";")
        if len(fields) < 6:
            raise UnreadableSddl(f"bad entry ({raw})")
        kind, ace_flags, rights, sid = fields[0], fields[1], fields[2], fields[5]
        entries.append(Ace(kind in _DENY_TYPES, ace_flags, _mask(rights), sid_of(sid)))
    return flags, tuple(entries)


def parse_sddl(text: str) -> Security:
    """The owner and DACL of an SDDL string such as `O:SYG:SYD:PAI(A;OICI;FA;;;SY)`."""
    marks = list(_PART.finditer(text))
    if not marks or marks[0].start() != 0:
        raise UnreadableSddl("no owner")
    parts: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        # A letter-colon inside an entry (none occur in owner/DACL SDDL) would land here too;
        # only the first of each part counts.
        parts.setdefault(mark.group(1), text[mark.end() : end])
    owner = parts.get("O", "")
    if not owner:
        raise UnreadableSddl("no owner")
    dacl = parts.get("D")
    if dacl is None or dacl.startswith("NO_ACCESS_CONTROL"):
        return Security(sid_of(owner), False, False, ())
    flags, aces = _aces(dacl)
    return Security(sid_of(owner), True, "P" in flags.replace("AI", "").replace("AR", ""), aces)


def state_dir_problem(root: PurePath, security: Security) -> str | None:
    """Why `root` may not be the state directory, or None when it is SYSTEM's and admins' only."""
    refuse = "so the agent refuses it; remove it or choose another --state-dir."
    if security.owner not in (SYSTEM, ADMINISTRATORS):
        return f"The state directory {root} belongs to {account(security.owner)}, not SYSTEM or Administrators, {refuse}"
    if not security.dacl_present:
        return (
            f"The state directory {root} has no access control list (anyone may use it), {refuse}"
        )
    others = sorted(
        {
            ace.sid
            for ace in security.aces
            if not ace.deny and ace.sid not in (SYSTEM, ADMINISTRATORS)
        }
    )
    if others:
        names = ", ".join(account(sid) for sid in others)
        return f"The state directory {root} lets {names} in, {refuse}"
    if not security.protected:
        return (
            f"The state directory {root} inherits its permissions from the folder above "
            f"(its access control list is not protected), {refuse}"
        )
    return None


def parent_problem(folder: PurePath, root: PurePath, security: Security) -> str | None:
    """Why `folder`, above the state directory `root`, lets another account replace it."""
    refuse = "so the agent refuses it; choose another --state-dir."
    if security.owner not in (SYSTEM, ADMINISTRATORS, TRUSTED_INSTALLER):
        return (
            f"{folder}, a parent of the state directory {root}, belongs to "
            f"{account(security.owner)}, {refuse}"
        )
    if not security.dacl_present:
        return (
            f"{folder}, a parent of the state directory {root}, has no access control list "
            f"(anyone may rename it), {refuse}"
        )
    trusted = (SYSTEM, ADMINISTRATORS, TRUSTED_INSTALLER)
    risky = sorted(
        {
            ace.sid
            for ace in security.aces
            if not ace.deny
            and not ace.inherit_only
            and ace.sid not in trusted
            and ace.mask & _TAKEOVER
        }
    )
    if risky:
        names = ", ".join(account(sid) for sid in risky)
        return (
            f"{folder}, a parent of the state directory {root}, lets {names} rename or "
            f"re-permission what is in it, {refuse}"
        )
    return None


def check_tree(root: PurePath, read_sddl: Callable[[PurePath], str | None]) -> str | None:
    """The first problem with `root` or a folder above it, checked from the top; None if none.

    `read_sddl` gives a folder's owner-and-DACL SDDL, or None when the folder does not exist
    (checked before it is created: only what exists is checked).
    """
    for folder in (*reversed(root.parents), root):
        text = read_sddl(folder)
        if text is None:
            continue
        try:
            security = parse_sddl(text)
        except UnreadableSddl:
            return (
                f"The agent could not read the permissions of {folder} ({text[:80]}), so it "
                "refuses the state directory."
            )
        problem = (
            state_dir_problem(root, security)
            if folder == root
            else parent_problem(folder, root, security)
        )
        if problem is not None:
            return problem
    return None


if sys.platform == "win32":  # pragma: no cover - runs on Windows endpoints only
    import ctypes
    from ctypes import wintypes

    _advapi = ctypes.WinDLL("advapi32", use_last_error=True)
    _kernel = ctypes.WinDLL("kernel32", use_last_error=True)
    _SE_FILE_OBJECT = 1
    _OWNER_SECURITY_INFORMATION, _DACL_SECURITY_INFORMATION = 0x1, 0x4
    _SDDL_REVISION_1 = 1
    _ERROR_FILE_NOT_FOUND, _ERROR_PATH_NOT_FOUND = 2, 3
    _ERROR_ALREADY_EXISTS, _ERROR_INVALID_OWNER = 183, 1307

    _advapi.GetNamedSecurityInfoW.restype = wintypes.DWORD
    _advapi.GetNamedSecurityInfoW.argtypes = [
        wintypes.LPCWSTR,
        ctypes.c_int,
        wintypes.DWORD,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    _advapi.ConvertSecurityDescriptorToStringSecurityDescriptorW.restype = wintypes.BOOL
    _advapi.ConvertSecurityDescriptorToStringSecurityDescriptorW.argtypes = [
        ctypes.c_void_p,
        wintypes.DWORD,
        wintypes.DWORD,
        ctypes.POINTER(wintypes.LPWSTR),
        ctypes.POINTER(wintypes.ULONG),
    ]
    _advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW.restype = wintypes.BOOL
    _advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
        wintypes.LPCWSTR,
        wintypes.DWORD,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(wintypes.ULONG),
    ]
    _kernel.CreateDirectoryW.restype = wintypes.BOOL
    _kernel.CreateDirectoryW.argtypes = [wintypes.LPCWSTR, ctypes.c_void_p]
    _kernel.LocalFree.restype = ctypes.c_void_p
    _kernel.LocalFree.argtypes = [ctypes.c_void_p]

    class _SecurityAttributes(ctypes.Structure):
        _fields_ = [
            ("nLength", wintypes.DWORD),
            ("lpSecurityDescriptor", ctypes.c_void_p),
            ("bInheritHandle", wintypes.BOOL),
        ]

    def read_sddl(folder: PurePath) -> str | None:
        """The owner and DACL of `folder` as SDDL; None when it does not exist."""
        descriptor = ctypes.c_void_p()
        status = _advapi.GetNamedSecurityInfoW(
            str(folder),
            _SE_FILE_OBJECT,
            _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
            None,
            None,
            None,
            None,
            ctypes.byref(descriptor),
        )
        if status in (_ERROR_FILE_NOT_FOUND, _ERROR_PATH_NOT_FOUND):
            return None
        if status != 0:
            raise OSError(status, f"Windows error {status} reading the permissions of {folder}")
        try:
            text = wintypes.LPWSTR()
            if not _advapi.ConvertSecurityDescriptorToStringSecurityDescriptorW(
                descriptor,
                _SDDL_REVISION_1,
                _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
                ctypes.byref(text),
                None,
            ):
                code = ctypes.get_last_error()
                raise OSError(code, f"Windows error {code} reading the permissions of {folder}")
            try:
                return str(text.value)
            finally:
                _kernel.LocalFree(text)
        finally:
            _kernel.LocalFree(descriptor)

    def _create_with(folder: Path, sddl: str) -> int:
        """CreateDirectoryW with the descriptor `sddl`; 0 or the Windows error code."""
        descriptor = ctypes.c_void_p()
        if not _advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl, _SDDL_REVISION_1, ctypes.byref(descriptor), None
        ):
            return int(ctypes.get_last_error())
        try:
            attributes = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), descriptor, False)
            if _kernel.CreateDirectoryW(str(folder), ctypes.byref(attributes)):
                return 0
            return int(ctypes.get_last_error())
        finally:
            _kernel.LocalFree(descriptor)

    def create_private_dir(folder: Path) -> None:
        """Create `folder` owned by SYSTEM (Administrators when an administrator runs this)
        with the private DACL from the start; one that exists already is left to the check."""
        code = _create_with(folder, PRIVATE_SDDL)
        if code == _ERROR_INVALID_OWNER:
            code = _create_with(folder, PRIVATE_SDDL_ADMIN_OWNER)
        if code not in (0, _ERROR_ALREADY_EXISTS):
            raise OSError(code, f"Windows error {code} creating {folder}")

else:

    def read_sddl(folder: PurePath) -> str | None:
        """Not Windows: there is no SDDL to read."""
        raise OSError("Windows security descriptors exist on Windows only.")

    def create_private_dir(folder: Path) -> None:
        """Not Windows: the POSIX path (tether.agent.state_guard) is used instead."""
        raise OSError("Windows security descriptors exist on Windows only.")
