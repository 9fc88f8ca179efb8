"""Windows: a job object per script run, so the script's whole tree dies with its agent.

Windows has no parent-death signal. A job object created with KILL_ON_JOB_CLOSE ends every
process in it when its last handle closes, and the kernel closes the agent's handles when the
agent dies, however it dies (docs/adr/0031). The child is put in the job before it is sent its
go (`script_child`), so nothing it starts is outside it; processes it starts inherit the job. A
process the script deliberately starts with CREATE_BREAKAWAY_FROM_JOB (a service it launches)
may leave, as on POSIX a process that starts a session of its own is spared at a clean end.

Elsewhere every function here is a no-op returning None, so callers need no platform checks.
"""

import sys
from typing import Any

# winnt.h
_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_LIMIT_BREAKAWAY_OK = 0x0800
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
_PROCESS_SET_QUOTA = 0x0100
_PROCESS_TERMINATE = 0x0001


class JobObjectError(OSError):
    """The script's process could not be tied to a job object."""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows endpoints only
    import ctypes
    from ctypes import wintypes

    class _BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _IoCounters(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_uint64)
            for name in (
                "ReadOperationCount",
                "WriteOperationCount",
                "OtherOperationCount",
                "ReadTransferCount",
                "WriteTransferCount",
                "OtherTransferCount",
            )
        ]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BasicLimits),
            ("IoInfo", _IoCounters),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    _kernel32.CreateJobObjectW.argtypes = [wintypes.LPVOID, wintypes.LPCWSTR]
    _kernel32.SetInformationJobObject.restype = wintypes.BOOL
    _kernel32.SetInformationJobObject.argtypes = [
        wintypes.HANDLE,
        ctypes.c_int,
        wintypes.LPVOID,
        wintypes.DWORD,
    ]
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    _kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
    _kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    _kernel32.CloseHandle.restype = wintypes.BOOL
    _kernel32.CloseHandle.argtypes = [wintypes.HANDLE]

    def _fail(doing: str) -> JobObjectError:
        code = ctypes.get_last_error()
        return JobObjectError(code, f"The agent could not {doing} (Windows error {code}).")

    def contain(pid: int) -> Any:
        """Put process `pid` in a new kill-on-close job; returns the job's handle.

        Keep the handle for as long as the script may run and pass it to `release` afterwards;
        closing it ends whatever is still in the job.
        """
        job = _kernel32.CreateJobObjectW(None, None)
        if not job:
            raise _fail("create a job object for the script")
        try:
            limits = _ExtendedLimits()
            limits.BasicLimitInformation.LimitFlags = (
                _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | _JOB_OBJECT_LIMIT_BREAKAWAY_OK
            )
            if not _kernel32.SetInformationJobObject(
                job,
                _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                ctypes.byref(limits),
                ctypes.sizeof(limits),
            ):
                raise _fail("make the script's job object end with the agent")
            process = _kernel32.OpenProcess(_PROCESS_SET_QUOTA | _PROCESS_TERMINATE, False, pid)
            if not process:
                raise _fail("open the script's process")
            try:
                if not _kernel32.AssignProcessToJobObject(job, process):
                    raise _fail("put the script's process in its job object")
            finally:
                _kernel32.CloseHandle(process)
        except BaseException:
            _kernel32.CloseHandle(job)
            raise
        return job

    def release(handle: Any) -> None:
        """Close a job handle from `contain`, ending whatever is still in the job."""
        if handle is not None:
            _kernel32.CloseHandle(handle)

else:

    def contain(pid: int) -> Any:
        """Not Windows: the child dies with the agent by other means (`script_child`)."""
        return None

    def release(handle: Any) -> None:
        """Not Windows: nothing to close."""
