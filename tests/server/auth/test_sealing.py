import pytest

from tether.server.auth.sealing import Sealer, SealError, new_key


def test_seal_round_trip_hides_the_secret() -> None:
    sealer = Sealer(new_key())
    sealed = sealer.seal(b"totp seed 12345", "user:1:totp")
    assert b"totp seed" not in sealed.encode()
    assert sealer.open(sealed, "user:1:totp") == b"totp seed 12345"
    assert sealer.seal(b"x", "c") != sealer.seal(b"x", "c")  # fresh nonce each time


def test_another_context_or_key_or_damage_does_not_open() -> None:
    sealer = Sealer(new_key())
    sealed = sealer.seal(b"seed", "user:1:totp")
    with pytest.raises(SealError):
        sealer.open(sealed, "user:2:totp")  # moved to another user's row
    with pytest.raises(SealError):
        Sealer(new_key()).open(sealed, "user:1:totp")
    with pytest.raises(SealError):
        sealer.open(sealed[:-4] + "AAAA", "user:1:totp")
    with pytest.raises(SealError):
        sealer.open("v9:" + sealed[3:], "user:1:totp")


def test_key_length_is_checked() -> None:
    with pytest.raises(SealError, match="32 bytes"):
        Sealer(b"short")
