"""Log setup shared by the agent and the platform processes.

Everything goes through the standard `logging` module (so library messages are included) and is
rendered by structlog: readable lines on a terminal, one JSON object per line otherwise
(`TETHER_LOG_FORMAT=json|text` forces either), ready for a log shipper.
"""

import logging
import os
import sys

# Before structlog, so that structlog comes without rich's traceback renderer (see there).
import tether.lean_structlog  # noqa: F401

# isort: split
import structlog


def configure(level: str = "info") -> None:
    chosen = os.environ.get("TETHER_LOG_FORMAT", "").lower()
    as_json = chosen == "json" or (chosen != "text" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # The WebSocket library logs every connection opened and closed at info; our gateway and
    # agent already log each with the host it belongs to, and at 10,000 agents a restart would
    # otherwise write 20,000 lines that say less. Shown again at debug.
    library = logging.getLogger("websockets")
    library.setLevel(
        max(root.level, logging.WARNING) if root.level > logging.DEBUG else logging.NOTSET
    )
