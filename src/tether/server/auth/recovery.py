"""One-time recovery codes: shown once, stored as SHA-256.

Each code carries 50 random bits, so a fast hash is enough: guessing is bounded by the login
throttle, and an offline search of 2^50 per code for ten codes is not worth anyone's while.
"""

import hashlib
import secrets

COUNT = 10
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes get typed from paper


def new_recovery_codes(count: int = COUNT) -> list[str]:
    """Codes like 'K7QF2-MZX9P' (10 symbols of 5 bits)."""
    codes = []
    for _ in range(count):
        symbols = "".join(secrets.choice(_ALPHABET) for _ in range(10))
        codes.append(f"{symbols[:5]}-{symbols[5:]}")
    return codes


def normalise(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def recovery_hash(code: str) -> str:
    return hashlib.sha256(normalise(code).encode()).hexdigest()
