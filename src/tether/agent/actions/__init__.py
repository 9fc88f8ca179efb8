"""Action handlers, by the name declared in `tether.protocol.ACTIONS`."""

from tether.agent.action import Handler
from tether.agent.actions import files, isolation, processes, scripts, system, transfers

HANDLERS: dict[str, Handler] = {
    "system.noop": system.noop,
    "processes.list": processes.list_processes,
    "processes.kill": processes.kill_processes,
    "files.list": files.list_files,
    "files.hash": files.hash_file,
    "files.get": transfers.get_file,
    "files.put": transfers.put_file,
    "script.run": scripts.run,
    "isolation.isolate": isolation.isolate,
    "isolation.release": isolation.release,
    "isolation.status": isolation.status,
}
