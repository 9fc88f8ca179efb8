"""The TLS settings of both ports: Mozilla's "intermediate" profile (ADR 0027).

TLS 1.2 and 1.3 only; for TLS 1.2 only the profile's ECDHE suites with AEAD ciphers (our keys
are ECDSA, so the RSA entries of the list simply never match); TLS 1.3's three suites are
OpenSSL's defaults already. Key exchange on the analyst port uses P-256 only: the profile allows
X25519, P-256 and P-384, but Python's ssl module can name only one group, and P-256 is the one
every client of the profile speaks. The agent port keeps OpenSSL's default groups: its only
clients are our agents, and a group they do not offer first would cost every agent connection
an extra round trip (a TLS 1.3 HelloRetryRequest).
"""

import ssl

# Mozilla intermediate, TLS 1.2 (OpenSSL names), in the profile's order.
INTERMEDIATE_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ANALYST_KEY_EXCHANGE_GROUP = "prime256v1"
# HSTS for the analyst port's answers: two years, as the profile recommends. No `preload`:
# platforms are reached under names their operators choose, often internal ones.
STRICT_TRANSPORT_SECURITY = "max-age=63072000; includeSubDomains"


def hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the versions, TLS 1.2 suites and options both ports share; returns `context`."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_TLS12_CIPHERS)
    # No client-initiated TLS 1.2 renegotiation (a cheap way to make the server work hard);
    # compression is off by default (CRIME).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


def analyst_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for the analyst port: the server certificate, no client certificates."""
    context = hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.set_ecdh_curve(ANALYST_KEY_EXCHANGE_GROUP)
    context.load_cert_chain(cert_file, key_file)
    return context
