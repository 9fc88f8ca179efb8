"""Action handlers, by the name declared in `tether.protocol.ACTIONS`."""

from tether.agent.action import Handler
from tether.agent.actions import files, isolation, processes, scripts, system, transfers
from tether.protocol.action_names import (
    FILES_GET,
    FILES_HASH,
    FILES_LIST,
    FILES_PUT,
    ISOLATION_ISOLATE,
    ISOLATION_RELEASE,
    ISOLATION_STATUS,
    PROCESSES_KILL,
    PROCESSES_LIST,
    SCRIPT_RUN,
    SYSTEM_NOOP,
)

HANDLERS: dict[str, Handler] = {
    SYSTEM_NOOP: system.noop,
    PROCESSES_LIST: processes.list_processes,
    PROCESSES_KILL: processes.kill_processes,
    FILES_LIST: files.list_files,
    FILES_HASH: files.hash_file,
    FILES_GET: transfers.get_file,
    FILES_PUT: transfers.put_file,
    SCRIPT_RUN: scripts.run,
    ISOLATION_ISOLATE: isolation.isolate,
    ISOLATION_RELEASE: isolation.release,
    ISOLATION_STATUS: isolation.status,
}
