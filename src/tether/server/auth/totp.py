"""RFC 6238 time-based one-time codes (and the RFC 4226 HOTP they are built on).

The platform checks a code; the quickstart (which runs the platform) and test automation holding a
secret file compute one. It lives with the platform, not in `tether.protocol`, because no agent
ever computes a code (docs/adr/0042). Standard library only. Which steps a verifier accepts, and
that each is accepted once, is the platform's business.
"""

import base64
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

STEP_SECONDS = 30
DIGITS = 6
ISSUER = "Tether"
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA-1 block the RFC recommends


def hotp(secret: bytes, counter: int, *, digits: int = DIGITS, digest: str = "sha1") -> str:
    """The RFC 4226 code for `counter`: HMAC, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(secret, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(unix_seconds: float, step: int = STEP_SECONDS) -> int:
    """The RFC 6238 counter T for a moment (T0 = 0)."""
    return int(unix_seconds // step)


def totp(secret: bytes, unix_seconds: float, *, digits: int = DIGITS, digest: str = "sha1") -> str:
    """The code an authenticator app shows at `unix_seconds`."""
    return hotp(secret, time_step(unix_seconds), digits=digits, digest=digest)


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def to_base32(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32, no padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def from_base32(text: str) -> bytes:
    """Parse a base32 secret as people type it (any case, spaces, missing padding)."""
    cleaned = "".join(text.split()).upper()
    try:
        return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except ValueError as exc:
        raise ValueError("The secret is not base32 text.") from exc


def provisioning_uri(username: str, secret: bytes, issuer: str = ISSUER) -> str:
    """The otpauth:// URI an authenticator app reads from a QR code."""
    label = quote(f"{issuer}:{username}", safe=":@")
    query = urlencode(
        {
            "secret": to_base32(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"
