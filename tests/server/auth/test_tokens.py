import hashlib

from tether.server.auth.tokens import new_token, token_hash


def test_tokens_are_random_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    token = tokens.pop()
    assert len(token) >= 43
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
