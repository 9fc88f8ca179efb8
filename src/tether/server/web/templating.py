"""The Jinja2 environment of the pages: autoescaping always on, templates from the package."""

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from tether.protocol.hostnames import shared_hostnames
from tether.protocol.text import readable
from tether.protocol.transfer import format_size

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
HTMX = "vendor/htmx-2.0.11.min.js"
# The live session console (docs/adr/0022): xterm.js drawing with its canvas renderer.
XTERM = {
    "xterm_js": "vendor/xterm-5.5.0.js",
    "xterm_css": "vendor/xterm-5.5.0.css",
    "xterm_canvas_js": "vendor/xterm-addon-canvas-0.7.0.js",
}


def when(value: datetime | None) -> str:
    """A timestamp as responders read it: UTC, to the second."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def shared_hostnames_of(listed: Iterable[Any]) -> frozenset[str]:
    """The hostnames more than one host carries among `listed` (jobs, retrieved files: anything
    with a `hostname` and a `host_id`, either of which may be missing): the rows whose id the
    page shows beside the name."""
    return shared_hostnames(
        (item.hostname, item.host_id) for item in listed if item.hostname and item.host_id
    )


def transfer(job: Any) -> str:
    """How far a job's file transfer is, as a sentence fragment ("1.5 GiB of 3.0 GiB (50%),
    180.2 MiB/s"); empty before any byte moved."""
    done, size = job.transfer_bytes, job.transfer_size
    if done is None or size is None:
        return ""
    share = f" ({done * 100 // size}%)" if size else ""
    rate = job.transfer_rate
    pace = f", {format_size(int(rate))}/s" if rate else ""
    return f"{format_size(done)} of {format_size(size)}{share}{pace}"


def shown(value: Any) -> Any:
    """Every value a page prints: control characters and bidirectional overrides (which an
    endpoint can put in a hostname, an error, a row or its output) are shown as visible
    escapes, so nothing on the page reads differently from what it is."""
    if isinstance(value, Markup):
        # Already HTML: the escapes put in its place are plain ASCII, no markup.
        return Markup(readable(str(value)))  # noqa: S704
    if isinstance(value, str):
        return readable(value)
    return value


def _environment() -> Environment:
    env = Environment(
        finalize=shown,
        loader=FileSystemLoader(TEMPLATES),
        # Everything is escaped, also in templates not named .html: endpoint data is hostile.
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["shared_hostnames"] = shared_hostnames_of

    env.filters["transfer"] = transfer
    env.globals["htmx"] = HTMX
    env.globals.update(XTERM)
    return env


ENVIRONMENT = _environment()


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render `template` with the signed-in user and the CSRF token, when there are any."""
    context.setdefault("user", getattr(request.state, "user", None))
    context.setdefault("csrf_token", getattr(request.state, "csrf_token", None))
    context.setdefault("path", request.url.path)
    context.setdefault("approvals_waiting", getattr(request.state, "approvals_waiting", 0))
    html = ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code)
