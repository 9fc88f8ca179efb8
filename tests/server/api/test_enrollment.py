"""Enrollment over the API: an admin makes a token, an endpoint posts a real CSR with it."""

import hashlib

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tether.protocol import EnrollmentToken
from tether.server.services.enrollment import TOKEN_REFUSED
from tether.server.services.platform import Platform

from ..support import make_csr


async def test_enroll_then_listed(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    made = await client.post("/api/v1/segments", json={"name": "workstations"}, headers=admin)
    assert made.status_code == 201, made.text
    created = await client.post(
        "/api/v1/enrollment-tokens",
        json={"segment": "workstations", "uses": 1, "expires_in_seconds": 3600},
        headers=admin,
    )
    assert created.status_code == 201
    token = EnrollmentToken.decode(created.json()["token"])
    assert token.ca_sha256 == platform.ca.sha256
    assert token.server_url == platform.settings.analyst_url

    ca = await client.get("/api/v1/enroll/ca")
    der = x509.load_pem_x509_certificate(ca.content).public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == token.ca_sha256

    csr, key = make_csr("ws-lab-7")
    body = {"secret": token.secret, "csr_pem": csr, "hostname": "ws-lab-7"}
    enrolled = await client.post("/api/v1/enroll", json=body)
    assert enrolled.status_code == 200, enrolled.text
    answer = enrolled.json()
    cert = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == answer["host_id"]
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(platform.ca.cert)

    hosts = (await client.get("/api/v1/hosts", headers=admin)).json()
    assert [(h["id"], h["hostname"], h["segment"], h["revoked"]) for h in hosts] == [
        (answer["host_id"], "ws-lab-7", "workstations", False)
    ]

    again = await client.post("/api/v1/enroll", json={**body, "csr_pem": make_csr()[0]})
    assert again.status_code == 403
    assert again.json() == {"detail": TOKEN_REFUSED}

    tokens = (await client.get("/api/v1/enrollment-tokens", headers=admin)).json()
    assert [(t["segment"], t["uses"], t["max_uses"]) for t in tokens] == [("workstations", 1, 1)]


async def test_enroll_with_a_bad_csr_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post("/api/v1/enrollment-tokens", json={}, headers=admin)
    secret = EnrollmentToken.decode(created.json()["token"]).secret
    response = await client.post(
        "/api/v1/enroll",
        json={"secret": secret, "csr_pem": "x" * 200, "hostname": "ws"},
    )
    assert response.status_code == 422
    assert response.json() == {"detail": "The certificate signing request is not a valid PEM CSR."}
