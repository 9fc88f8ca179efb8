"""Log setup shared by the agent and the platform processes: plain lines on stderr."""

import logging


def configure(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
