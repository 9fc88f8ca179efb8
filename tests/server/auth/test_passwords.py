"""Password hashing with the production parameters (the other tests use a cheaper hasher)."""

from argon2 import PasswordHasher, extract_parameters
from argon2.low_level import Type

from tether.server.auth import passwords
from tether.server.auth.passwords import generate_password, hash_password, verify_password


def test_hashes_are_argon2id_with_at_least_owasp_parameters() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    params = extract_parameters(stored)
    assert params.type is Type.ID
    assert params.memory_cost >= 19 * 1024  # KiB
    assert params.time_cost >= 2
    assert isinstance(passwords._hasher, PasswordHasher)


def test_verify() -> None:
    stored = hash_password("correct horse battery")
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "correct horse battery ")
    assert not verify_password("not a hash", "x")


def test_unknown_user_is_never_verified_but_costs_a_verification() -> None:
    assert not verify_password(None, "anything")
    assert extract_parameters(passwords._DUMMY_HASH) == extract_parameters(hash_password("x"))


def test_generated_passwords_are_long_and_distinct() -> None:
    made = {generate_password() for _ in range(20)}
    assert len(made) == 20
    assert all(len(p) >= 24 for p in made)
