"""Messages of a CA rotation (docs/adr/0048): while a rotation is under way the platform's
certificate (still issued by the CA every agent pins) names the next CA's SHA-256 in an
extension of its own (`NEXT_CA_OID`, not critical, so TLS libraries pass over it); an agent
that sees it asks for a certificate under that CA over its live connection (`ca.rekey`), and
the platform answers with the certificate and the CA (`ca.certificate`).

The agent starts the exchange, so a platform never sends `ca.certificate` to an agent that does
not know it: agents of earlier releases never ask, and block the end of the rotation until
they are upgraded or revoked.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# A private OID (ITU-T X.667: 2.25 followed by a UUID as an integer). Its value is the next
# CA's SHA-256 (of its DER), as 64 lowercase hexadecimal ASCII characters.
NEXT_CA_OID = "2.25.34634430988228342103071178489905910916"

# A PEM certificate or CSR of an ECDSA P-256 key is well under 1 KiB; this leaves room.
Pem = Annotated[str, Field(min_length=64, max_length=8192, pattern=r"^-----BEGIN [A-Z ]+-----")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaRekey(_Message):
    """Agent to platform: a CSR for a new key, to be signed by the platform's new CA."""

    type: Literal["ca.rekey"] = "ca.rekey"
    csr: Pem


class CaCertificate(_Message):
    """Platform to agent: the agent's certificate under the new CA, and that CA."""

    type: Literal["ca.certificate"] = "ca.certificate"
    certificate: Pem
    ca: Pem
