from tether.server.auth.recovery import new_recovery_codes, normalise, recovery_hash


def test_codes_are_distinct_readable_and_hashed_loosely() -> None:
    codes = new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10
    assert all(len(c) == 11 and c[5] == "-" for c in codes)
    assert not set("".join(codes)) & set("01IO")
    code = codes[0]
    assert recovery_hash(code) == recovery_hash(code.lower().replace("-", " "))
    assert recovery_hash(code) != recovery_hash(codes[1])
    assert normalise(" ab-cd ") == "ABCD"
