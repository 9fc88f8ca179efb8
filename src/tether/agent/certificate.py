"""Checks on the agent's own certificate that the agent can make without the platform.

uvloop sends no TLS alert when the platform refuses an expired client certificate, so the agent
would only see a dropped connection and retry forever. Checking the validity window locally lets
it stop with a reason an operator can act on instead of spinning.
"""

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from tether.agent.errors import AgentRefused


def check_validity(cert_path: Path, now: datetime | None = None) -> None:
    """Raise AgentRefused when the certificate at `cert_path` is expired or not yet valid."""
    now = now or datetime.now(UTC)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AgentRefused(
            f"The agent certificate {cert_path} cannot be read ({exc}); enroll the agent again."
        ) from exc
    if now > certificate.not_valid_after_utc:
        raise AgentRefused(
            f"The agent certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "enroll the agent again with a new token."
        )
    if now < certificate.not_valid_before_utc:
        raise AgentRefused(
            f"The agent certificate is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this endpoint's clock."
        )
