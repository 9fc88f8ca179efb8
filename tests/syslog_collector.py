"""A real syslog collector for tests: TCP or TLS on loopback, octet-counted RFC 5424 frames.

It runs in threads of the test process, so a platform in another process (the e2e tests) or on
the test's own event loop (the service tests) sends to it alike. It parses each frame strictly,
so a frame that is not what RFC 5424 / RFC 6587 say fails the test that reads it.
"""

import contextlib
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

# <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG
FRAME = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    r'\[checkpoint@32473 seq="(?P<seq>\d+)" hash="(?P<hash>[0-9a-f]{64})" '
    r'signed_at="(?P<signed_at>[^"]+)" signature="(?P<signature>[A-Za-z0-9+/=]+)" '
    r'key="(?P<key>[0-9a-f]{64})"\] \ufeff(?P<msg>\{.*\})',
    re.DOTALL,
)


@dataclass(frozen=True)
class SyslogMessage:
    """One received message: the header and structured data, and the JSON message."""

    fields: dict[str, str]
    document: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])


def parse_frame(payload: bytes) -> SyslogMessage:
    match = FRAME.fullmatch(payload.decode())
    assert match is not None, f"not an RFC 5424 checkpoint message: {payload!r}"
    return SyslogMessage(match.groupdict(), json.loads(match["msg"]))


class SyslogCollector:
    """Listens on 127.0.0.1 (`port` 0 picks one); keeps every framed message it receives."""

    def __init__(self, context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port: int = self._listener.getsockname()[1]
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'tls' if self._context else 'tcp'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            with self._lock:
                self._connections.append(conn)
            stream = conn.makefile("rb")
            while True:
                count = b""
                while (byte := stream.read(1)) != b" ":
                    if not byte:
                        return
                    assert byte.isdigit(), f"octet count expected, got {byte!r}"
                    count += byte
                payload = stream.read(int(count))
                with self._lock:
                    self.raw.append(payload)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def messages(self) -> list[SyslogMessage]:
        with self._lock:
            return [parse_frame(p) for p in self.raw]

    def wait_for_seq(self, seq: int, timeout: float = 20.0) -> SyslogMessage:
        """The message for checkpoint `seq`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages() if m.seq >= seq]
            if found:
                return found[0]
            time.sleep(0.05)
        seen = [m.seq for m in self.messages()]
        raise AssertionError(f"no checkpoint at record {seq} or later reached syslog: {seen}")

    def close(self) -> None:
        self._closed = True
        # A thread blocked in accept() keeps a closed listener bound; shutdown wakes it first.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
