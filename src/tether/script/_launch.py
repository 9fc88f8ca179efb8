"""Entry point of the child process the agent starts for a script.

Runs the script file as `__main__`; an uncaught exception prints a traceback that starts at the
script's own code (not this launcher's frames) and exits with code 1.
"""

import runpy
import sys
import traceback


def main(path: str) -> None:
    sys.argv = [path]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        sys.stderr.flush()
        sys.exit(1)
