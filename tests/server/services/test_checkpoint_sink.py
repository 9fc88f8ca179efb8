"""Checkpoints leave the platform as they are signed: RFC 5424 over real TCP and TLS sockets,
JSON lines to a file, and a sink that is down never holds the signer up."""

import asyncio
import json
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tether.protocol.checkpoint import CheckpointDocument
from tether.server.config import Settings
from tether.server.errors import ConfigurationError
from tether.server.services.checkpoint_sink import (
    CheckpointForwarder,
    CheckpointWitnesses,
    build_witnesses,
)
from tether.server.services.checkpoint_sinks.json_file import JsonFileSink
from tether.server.services.checkpoint_sinks.syslog import (
    SyslogSink,
    parse_syslog_target,
)
from tether.server.services.checkpoints import (
    Checkpoint,
    CheckpointSigner,
    key_fingerprint,
    signed_by,
)
from tether.server.services.pki import CertificateAuthority, save_keypair

from ...syslog_collector import SyslogCollector


def _checkpoint(signer: CheckpointSigner, seq: int) -> Checkpoint:
    return signer.sign(seq, f"{seq:064x}", datetime.now(UTC))


def _server_context(ca: CertificateAuthority, tmp_path: Path) -> ssl.SSLContext:
    cert, key = ca.issue_server("localhost", ["127.0.0.1"])
    save_keypair(cert, key, tmp_path / "siem.pem", tmp_path / "siem.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "siem.pem", tmp_path / "siem.key")
    return context


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_each_signed_checkpoint_reaches_a_tls_collector_as_an_rfc5424_frame(
    signer: CheckpointSigner, ca: CertificateAuthority, tmp_path: Path
) -> None:
    collector = SyslogCollector(_server_context(ca, tmp_path))
    ca.save(tmp_path / "siem-ca.pem", tmp_path / "siem-ca.key")
    settings = Settings(
        data_dir=tmp_path,
        hostname="tether-1.example",
        checkpoint_syslog=collector.url,
        checkpoint_syslog_ca=str(tmp_path / "siem-ca.pem"),
    )
    witnesses = build_witnesses(settings, signer)
    witnesses.start()
    try:
        signed = [_checkpoint(signer, seq) for seq in (1, 2, 3)]
        await asyncio.to_thread(collector.wait_for_seq, 3)
    finally:
        await witnesses.close()
        collector.close()

    messages = collector.messages()
    assert [m.seq for m in messages] == [1, 2, 3]
    first, cp = messages[0], signed[0]
    assert first.fields["pri"] == "110"  # log audit, informational
    assert (first.fields["host"], first.fields["app"], first.fields["msgid"]) == (
        "tether-1.example",
        "tether",
        "checkpoint",
    )
    assert first.fields["ts"] == cp.signed_at.replace("+00:00", "Z")
    assert (first.fields["hash"], first.fields["signed_at"]) == (cp.hash, cp.signed_at)
    assert first.fields["signature"] == cp.signature
    assert first.fields["key"] == key_fingerprint(signer.public_key_pem())
    # The message is the document `tether audit verify --checkpoint` reads.
    document = CheckpointDocument.model_validate(first.document)
    assert document.public_key == signer.public_key_pem()
    assert first.document["platform"] == "tether-1.example"
    assert signed_by(signer.public_key, Checkpoint(cp.seq, cp.hash, cp.signed_at, cp.signature))


async def test_a_tls_collector_the_named_ca_did_not_issue_gets_nothing(
    signer: CheckpointSigner, ca: CertificateAuthority, tmp_path: Path
) -> None:
    collector = SyslogCollector(_server_context(CertificateAuthority.create("impostor"), tmp_path))
    ca.save(tmp_path / "siem-ca.pem", tmp_path / "siem-ca.key")
    sink = SyslogSink(
        parse_syslog_target(collector.url),
        hostname="t",
        public_key_pem=signer.public_key_pem(),
        ca_file=tmp_path / "siem-ca.pem",
    )
    forwarder = CheckpointForwarder(sink, first_retry=0.05, last_retry=0.05)
    forwarder.start()
    try:
        forwarder.offer(_checkpoint(signer, 1))
        await _until(lambda: forwarder.failures >= 2)
    finally:
        await forwarder.close(grace=0)
        collector.close()
    assert collector.raw == []
    assert forwarder.sent == 0


async def test_a_collector_that_is_down_costs_old_checkpoints_never_the_newest(
    signer: CheckpointSigner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = SyslogCollector()
    port = first.port
    first.close()  # nothing listens: every connection is refused
    sink = SyslogSink(
        parse_syslog_target(f"tcp://127.0.0.1:{port}"),
        hostname="t",
        public_key_pem=signer.public_key_pem(),
    )
    forwarder = CheckpointForwarder(sink, capacity=2, first_retry=0.05, last_retry=0.2)
    witnesses = CheckpointWitnesses([])
    witnesses.forwarders.append(forwarder)
    forwarder.start()
    try:
        started = time.monotonic()
        for seq in range(1, 6):
            forwarder.offer(_checkpoint(signer, seq))
        # Offering never waits on the sink.
        assert time.monotonic() - started < 0.5
        await _until(lambda: forwarder.failures >= 2)
        assert forwarder.dropped == 3
        # Said in the log, once for the burst rather than once per checkpoint.
        behind = [r.getMessage() for r in caplog.records if "is behind" in r.getMessage()]
        assert behind == [
            f"Checkpoint sink syslog tcp://127.0.0.1:{port} is behind: dropped the checkpoint at "
            "record 1 for a newer one (1 dropped so far)"
        ]
        assert any(
            "Cannot send the checkpoint at record 4" in r.getMessage() for r in caplog.records
        )
        collector = SyslogCollector(port=port)
        try:
            await _until(lambda: forwarder.pending == 0)
            messages = await asyncio.to_thread(collector.wait_for_seq, 5)
        finally:
            collector.close()
    finally:
        await forwarder.close(grace=0)
    assert messages.seq == 5
    assert [m.seq for m in collector.messages()] == [4, 5]

    registry = CollectorRegistry()
    registry.register(witnesses.collector())
    metrics = generate_latest(registry).decode()
    name = f'sink="syslog tcp://127.0.0.1:{port}"'
    assert f"tether_checkpoint_sink_dropped_total{{{name}}} 3.0" in metrics
    assert f"tether_checkpoint_sink_sent_total{{{name}}} 2.0" in metrics
    assert f"tether_checkpoint_sink_failures_total{{{name}}} {forwarder.failures}.0" in metrics


async def test_a_collector_that_restarts_gets_the_next_checkpoint_on_a_new_connection(
    signer: CheckpointSigner,
) -> None:
    collector = SyslogCollector()
    port = collector.port
    sink = SyslogSink(
        parse_syslog_target(collector.url), hostname="t", public_key_pem=signer.public_key_pem()
    )
    forwarder = CheckpointForwarder(sink, first_retry=0.05)
    forwarder.start()
    try:
        forwarder.offer(_checkpoint(signer, 1))
        await asyncio.to_thread(collector.wait_for_seq, 1)
        collector.close()
        await asyncio.sleep(0.2)
        again = SyslogCollector(port=port)
        forwarder.offer(_checkpoint(signer, 2))
        try:
            await asyncio.to_thread(again.wait_for_seq, 2)
        finally:
            again.close()
    finally:
        await forwarder.close(grace=0)
    assert [m.seq for m in again.messages()] == [2]


async def test_the_newest_checkpoint_is_sent_at_start_and_again_while_nothing_is_signed(
    signer: CheckpointSigner,
) -> None:
    before_start = _checkpoint(signer, 7)
    collector = SyslogCollector()
    sink = SyslogSink(
        parse_syslog_target(collector.url), hostname="t", public_key_pem=signer.public_key_pem()
    )
    witnesses = CheckpointWitnesses([sink], signer, resend_seconds=0.2)
    witnesses.start()
    try:
        await _until(lambda: len(collector.raw) >= 3)
    finally:
        await witnesses.close()
        collector.close()
    sent = collector.messages()
    assert {(m.seq, m.fields["signature"]) for m in sent} == {(7, before_start.signature)}


async def test_the_json_file_sink_appends_one_verifiable_line_per_checkpoint(
    signer: CheckpointSigner, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoints.jsonl"
    witnesses = CheckpointWitnesses(
        [JsonFileSink(path, hostname="h", public_key_pem=signer.public_key_pem())]
    )
    signer.add_listener(witnesses.offer)
    witnesses.start()
    signed = [_checkpoint(signer, seq) for seq in (1, 2)]
    await witnesses.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["seq"], d["hash"], d["signature"]) for d in lines] == [
        (c.seq, c.hash, c.signature) for c in signed
    ]
    assert all(d["public_key"] == signer.public_key_pem() for d in lines)


@pytest.mark.parametrize(
    "url",
    [
        "udp://siem:514",
        "tls://siem",
        "siem:6514",
        "tls://:6514",
        "tls://siem:6514/x",
        "tls://s:99999",
    ],
)
def test_a_collector_address_that_is_not_one_is_refused_in_one_sentence(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_syslog_target(url)
    assert str(refused.value) == (
        f"{url!r} is not a syslog collector address like tls://siem.example:6514 or "
        "tcp://siem.example:601."
    )
