"""The web UI: server-rendered pages (Jinja2) with htmx, served on the analyst port.

`install(app)` adds the pages, the static files and the security headers; see ADR 0019.
"""

from tether.server.web.routes import install

__all__ = ["install"]
