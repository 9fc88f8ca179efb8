"""One-time enrollment codes: 100 random bits, shown once, stored as SHA-256.

A fast hash suffices at that entropy (as for recovery codes); the code is also bound to one
user, expires, and works once.
"""

import secrets

from tether.server.auth.recovery import recovery_hash

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes get read out and typed
_SYMBOLS = 20


def new_enrollment_code() -> str:
    """A code like 'K7QF2-MZX9P-4HTRW-C8DNB' (20 symbols of 5 bits)."""
    symbols = "".join(secrets.choice(_ALPHABET) for _ in range(_SYMBOLS))
    return "-".join(symbols[i : i + 5] for i in range(0, _SYMBOLS, 5))


def enrollment_code_hash(code: str) -> str:
    """The stored form; dashes, spaces and case do not matter."""
    return recovery_hash(code)
