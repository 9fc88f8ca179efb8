"""An HTTPS client for the REST API that trusts only the pinned platform CA."""

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from tether.cli import profile
from tether.cli.errors import ApiError, CliError, Unreachable

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
    def from_profile(cls) -> "Api":
        current = profile.load()
        if not current.token:
            raise CliError("Not logged in; run 'tether login' first.")
        return cls(current.server, current.ca_pem, current.token)

    def close(self) -> None:
        """Close the kept-alive connection to the platform."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
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
