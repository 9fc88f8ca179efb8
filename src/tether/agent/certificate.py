"""Checks on the agent's own certificate that the agent can make without the platform.

uvloop sends no TLS alert when the platform refuses an expired client certificate, so the agent
would only see a dropped connection and retry forever. Checking the validity window locally lets
it stop with a reason an operator can act on instead of spinning.

The window is read from the certificate's DER with the few lines below rather than with
`cryptography`: loading that library's bindings costs the running agent about 9 MiB of resident
memory, and nothing else an idle agent does needs it (enrolling does, and imports it itself;
docs/adr/0052). The platform issued the certificate and the agent's own TLS stack verifies it
on every connection; this reader only finds two dates in it.
"""

import base64
import binascii
from datetime import UTC, datetime
from pathlib import Path

from tether.agent.errors import AgentRefused

_SEQUENCE = 0x30
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_VERSION_TAG = 0xA0


class _Malformed(ValueError):
    pass


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at offset `at`."""
    if at + 2 > len(der):
        raise _Malformed("truncated")
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            raise _Malformed("bad length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise _Malformed("truncated")
    return tag, start, end


def _time(der: bytes, at: int) -> tuple[datetime, int]:
    tag, start, end = _element(der, at)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME:
        # RFC 5280: YYMMDDHHMMSSZ, years 50-99 are 19xx.
        parsed = datetime.strptime(text, "%y%m%d%H%M%SZ")
    elif tag == _GENERALIZED_TIME:
        parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise _Malformed("not a time")
    return parsed.replace(tzinfo=UTC), end


def validity(pem: bytes) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of the first certificate in `pem`; ValueError when it is not one."""
    text = pem.decode("ascii", errors="replace")
    begin, end_marker = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end_marker not in text:
        raise _Malformed("no PEM certificate")
    body = text.split(begin, 1)[1].split(end_marker, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise _Malformed("bad base64") from exc
    tag, start, _ = _element(der, 0)  # Certificate
    if tag != _SEQUENCE:
        raise _Malformed("not a certificate")
    tag, at, _ = _element(der, start)  # TBSCertificate
    if tag != _SEQUENCE:
        raise _Malformed("not a certificate")
    tag, _, after = _element(der, at)
    if tag == _VERSION_TAG:
        at = after
    for _field in ("serialNumber", "signature", "issuer"):
        _, _, at = _element(der, at)
    tag, at, _ = _element(der, at)  # Validity
    if tag != _SEQUENCE:
        raise _Malformed("no validity")
    not_before, at = _time(der, at)
    not_after, _ = _time(der, at)
    return not_before, not_after


def check_validity(cert_path: Path, now: datetime | None = None) -> None:
    """Raise AgentRefused when the certificate at `cert_path` is expired or not yet valid."""
    now = now or datetime.now(UTC)
    try:
        not_before, not_after = validity(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AgentRefused(
            f"The agent certificate {cert_path} cannot be read ({exc}); enroll the agent again."
        ) from exc
    if now > not_after:
        raise AgentRefused(
            f"The agent certificate expired on {not_after:%Y-%m-%d %H:%M} UTC; "
            "enroll the agent again with a new token."
        )
    if now < not_before:
        raise AgentRefused(
            f"The agent certificate is not valid before "
            f"{not_before:%Y-%m-%d %H:%M} UTC; check this endpoint's clock."
        )
