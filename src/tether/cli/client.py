"""An HTTPS client for the REST API that trusts only the pinned platform CA."""

import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import typer

from tether.cli import profile
from tether.cli.errors import ApiError, CliError, Unreachable
from tether.protocol.step_up import CODE_HEADER, STEP_UP_HEADER

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A proxy in front of a restarting platform answers these: the request may well work again.
_TRANSIENT = {502, 503, 504}


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    return f"The platform answered HTTP {response.status_code}."


# The option every sensitive command takes (step-up); without it a terminal is asked when needed.
StepUpOpt = Annotated[
    str | None,
    typer.Option(
        "--code",
        help="A fresh authenticator code, for a change that asks for one (step-up, 5 minutes).",
    ),
]


def check_code(typed: str) -> str:
    """The 6 digits of an authenticator code, or CliError."""
    code = typed.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        raise CliError("An authentication code is the 6 digits your authenticator app shows.")
    return code


class Api:
    """Thin wrapper: raises CliError with the platform's one-sentence reason on any failure."""

    def __init__(
        self,
        server: str,
        ca_pem: str,
        token: str | None = None,
        *,
        login_hint: bool = True,
        transport: httpx.BaseTransport | None = None,
        step_up_code: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        # The pinned CA names this platform as much as its address does (audit witnesses).
        self.ca_pem = ca_pem
        # Off for `tether login` itself, where "run 'tether login'" would be no help.
        self._login_hint = login_hint
        context = ssl.create_default_context(cadata=ca_pem)
        headers = {"user-agent": "tether-cli"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if step_up_code:
            # A fresh second-factor code for a sensitive change (step-up, docs/adr/0034).
            headers[CODE_HEADER] = check_code(step_up_code)
        self._step_up_sent = bool(step_up_code)
        # `transport` swaps the network for an in-memory one in tests.
        self._http = httpx.Client(
            base_url=f"{self.server}/api/v1",
            verify=context,
            headers=headers,
            timeout=TIMEOUT,
            # Tests hand in an in-process platform; everyone else talks TLS to the real one.
            transport=transport,
        )

    @classmethod
    def from_profile(cls, *, step_up_code: str | None = None) -> "Api":
        """A client with the logged-in session; `step_up_code` goes with every request as the
        fresh second-factor code a sensitive change may ask for."""
        current = profile.load()
        if not current.token:
            raise CliError("Not logged in; run 'tether login' first.")
        return cls(current.server, current.ca_pem, current.token, step_up_code=step_up_code)

    def close(self) -> None:
        """Close the kept-alive connection to the platform."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
            if self._asks_for_code(response):
                # Nothing was changed: the platform refused before acting, so asking for the
                # code and sending the same request again is safe.
                code = check_code(
                    typer.prompt("Authentication code (this change needs a fresh one)")
                )
                self._http.headers[CODE_HEADER] = code
                self._step_up_sent = True
                response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"Cannot reach the platform at {self.server}: {exc}.") from exc
        if response.status_code == 401 and self._login_hint:
            raise ApiError(f"{_problem(response)} (run 'tether login')", 401)
        if response.status_code in _TRANSIENT:
            raise Unreachable(_problem(response))
        if response.status_code >= 400:
            raise ApiError(_problem(response), response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _asks_for_code(self, response: httpx.Response) -> bool:
        """The platform wants a fresh second-factor code and a person is there to type it."""
        return (
            response.status_code == 403
            and response.headers.get(STEP_UP_HEADER) == "required"
            and not self._step_up_sent
            and sys.stdin.isatty()
        )

    def get_optional(self, path: str, **kwargs: Any) -> Any:
        """Like `get`, but None when the platform answers 404 (no such thing, or no such
        route on this platform version)."""
        try:
            response = self._http.request("GET", path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"Cannot reach the platform at {self.server}: {exc}.") from exc
        if response.status_code == 404:
            return None
        if response.status_code == 401 and self._login_hint:
            raise CliError(f"{_problem(response)} (run 'tether login')")
        if response.status_code >= 400:
            raise CliError(_problem(response))
        return response.json() if response.content else None

    def stream_lines(self, path: str, params: dict[str, str] | None = None) -> Iterator[str]:
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CliError(_problem(response))
                yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise CliError(f"Cannot reach the platform at {self.server}: {exc}.") from exc

    def download(self, path: str, sink: Callable[[bytes], None]) -> httpx.Headers:
        """Stream a response body into `sink` chunk by chunk; returns the response headers."""
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(60.0, connect=10.0)) as got:
                if got.status_code >= 400:
                    got.read()
                    raise ApiError(_problem(got), got.status_code)
                for chunk in got.iter_bytes(1024 * 1024):
                    sink(chunk)
                return got.headers
        except httpx.HTTPError as exc:
            raise Unreachable(f"Cannot reach the platform at {self.server}: {exc}.") from exc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)
