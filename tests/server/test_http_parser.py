"""The analyst API parses HTTP with httptools (C), not h11 (pure Python): uvicorn picks it only
when it is installed, and silently falls back otherwise, so the platform's extra must carry it."""

from typing import Any

from uvicorn.config import Config


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


def test_uvicorn_picks_the_c_http_parser() -> None:
    config = Config(app=_app, lifespan="off")
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
