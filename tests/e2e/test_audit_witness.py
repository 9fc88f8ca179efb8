"""Witnesses off the host against a real platform process and the real CLI.

The attacker can write the data directory and the database but has no signing key: they put an
older genuine `audit-anchor.json` back, delete or rewrite every later record by direct SQL, and
wait for the next action to sign the forged head. The platform's own check is fooled (its only
reference is the file they rolled back); the CLI's remembered checkpoint, a checkpoint exported
from a second config folder, and the checkpoints the platform sent to a TLS syslog collector and
to a JSON-lines file each catch it, in one sentence.
"""

import json
import re
import shutil
import sqlite3
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tether.server.services.audit import GENESIS_HASH, record_hash
from tether.server.services.checkpoints import (
    CheckpointSigner,
    checkpoint_document,
    key_fingerprint,
)
from tether.server.services.pki import CertificateAuthority, save_keypair

from ..syslog_collector import SyslogCollector
from .harness import Children, Cli, Platform, wait_for


def _said(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Witnessed:
    platform: Platform
    collector: SyslogCollector
    sink_file: Path
    root: Path


@pytest.fixture
def witnessed(tmp_path: Path, children: Children) -> Iterator[Witnessed]:
    """A platform that sends each checkpoint to a TLS syslog collector (its certificate from a
    CA of the test's own) and to a JSON-lines file."""
    siem_ca = CertificateAuthority.create("siem-ca")
    cert, key = siem_ca.issue_server("siem.test", ["127.0.0.1"])
    save_keypair(cert, key, tmp_path / "siem.pem", tmp_path / "siem.key")
    siem_ca.save(tmp_path / "siem-ca.pem", tmp_path / "siem-ca.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "siem.pem", tmp_path / "siem.key")
    collector = SyslogCollector(context)
    sink_file = tmp_path / "siem" / "checkpoints.jsonl"
    sink_file.parent.mkdir()
    platform = Platform(tmp_path / "p", children)
    platform.init_args = [
        "--checkpoint-syslog",
        collector.url,
        "--checkpoint-syslog-ca",
        str(tmp_path / "siem-ca.pem"),
        "--checkpoint-file",
        str(sink_file),
    ]
    platform.root.mkdir()
    platform.init()
    platform.start()
    try:
        yield Witnessed(platform, collector, sink_file, tmp_path)
    finally:
        collector.close()


def _act(cli: Cli, times: int = 1) -> None:
    """Audited actions (each signs a new checkpoint)."""
    for _ in range(times):
        cli.ok("enroll-token", "create", "--segment", "default", "--uses", "1")


def _records(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT seq, ts, actor, action, target, outcome, source, details, prev_hash, hash "
            "FROM audit_records ORDER BY seq"
        ).fetchall()


def _roll_back_and_delete(platform: Platform, old_anchor: Path, keep: int) -> None:
    shutil.copyfile(old_anchor, platform.data / "audit-anchor.json")
    with sqlite3.connect(platform.db) as conn:
        kept_hash = conn.execute(
            "SELECT hash FROM audit_records WHERE seq = ?", (keep,)
        ).fetchone()[0]
        conn.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
        conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (keep, kept_hash))


def _roll_back_and_rewrite(platform: Platform, old_anchor: Path, keep: int) -> None:
    """Rewrite every record after `keep` (each says someone else did it), chain recomputed."""
    shutil.copyfile(old_anchor, platform.data / "audit-anchor.json")
    names = ("seq", "ts", "actor", "action", "target", "outcome", "source", "details")
    prev = GENESIS_HASH
    with sqlite3.connect(platform.db) as conn:
        for row in _records(platform.db):
            fields = dict(zip(names, row[:8], strict=True))
            if int(row[0]) <= keep:  # type: ignore[call-overload]
                prev = str(row[9])
                continue
            fields["actor"] = "nobody"
            new_hash = record_hash(**fields, prev_hash=prev)  # type: ignore[arg-type]
            conn.execute(
                "UPDATE audit_records SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                ("nobody", prev, new_hash, row[0]),
            )
            prev = new_hash
        conn.execute("UPDATE audit_head SET hash = ? WHERE id = 1", (prev,))


def _setup_witnesses(w: Witnessed) -> tuple[Cli, Path, Path, Path, int, int, int]:
    """The admin verifies (remembering a checkpoint), a second config folder exports one, the
    sinks receive them; returns the clients, the old anchor, the witness files and seqs."""
    platform = w.platform
    admin = platform.login(w.root / "admin-cli")
    first = admin.run("audit", "verify")
    assert first.returncode == 0, first.stderr
    assert "First verification of" in first.stdout
    old_anchor = w.root / "anchor-copy.json"
    shutil.copyfile(platform.data / "audit-anchor.json", old_anchor)
    rolled_to = json.loads(old_anchor.read_text())["seq"]

    _act(admin, 3)
    second = platform.login(w.root / "second-cli")
    exported_file = w.root / "exported.json"
    exported_file.write_text(second.ok("audit", "checkpoint", "export"))
    exported_seq = json.loads(exported_file.read_text())["seq"]
    assert exported_seq > rolled_to

    again = admin.run("audit", "verify")
    assert again.returncode == 0, again.stderr
    remembered_seq = json.loads(
        next((w.root / "admin-cli" / "audit-witness").glob("*.json")).read_text()
    )["checkpoint"]["seq"]
    assert remembered_seq >= exported_seq

    newest = w.collector.wait_for_seq(remembered_seq).document
    siem_file = w.root / "from-siem.json"
    siem_file.write_text(json.dumps(newest))
    wait_for(
        lambda: any(
            json.loads(line)["seq"] == remembered_seq
            for line in w.sink_file.read_text().splitlines()
        ),
        timeout=10,
        what="the JSON sink's line",
    )
    return admin, old_anchor, exported_file, siem_file, rolled_to, exported_seq, remembered_seq


def _assert_fooled_alone_caught_by_witnesses(
    w: Witnessed,
    admin: Cli,
    files: dict[str, tuple[Path, int]],
    remembered_seq: int,
    reason: Callable[[int, int], str],
) -> None:
    platform = w.platform
    # Why the platform alone is fooled: it compares the log with the anchor file, and the anchor
    # that was put back is genuine and the log extends it; the forged head was signed on top.
    # A config folder that never saw a later checkpoint has nothing to hold against it.
    stranger = platform.login(w.root / "fresh-cli").run("audit", "verify")
    assert stranger.returncode == 0, stranger.stdout
    assert "First verification of" in stranger.stdout
    with admin.api() as api:
        plain = api.get("/audit/verify").json()
    assert plain["intact"] is True, plain
    head = plain["head_seq"]
    reason_for = {
        seq: reason(seq, head) for seq in (remembered_seq, *(s for _, s in files.values()))
    }

    today = datetime.now(UTC).date().isoformat()
    remembered = admin.run("audit", "verify")
    assert remembered.returncode == 1
    expected = (
        f"BROKEN: The audit log does not extend the checkpoint you verified on {today} at "
        f"record {remembered_seq}: {reason_for[remembered_seq]}"
    )
    assert _said(remembered.stdout) == expected
    # The memory did not move on to the forged head: asked again, it says the same.
    assert _said(admin.run("audit", "verify").stdout) == expected

    second = Cli(w.root / "second-cli", platform.env)
    for path, seq in files.values():
        done = second.run("audit", "verify", "--checkpoint", str(path))
        assert done.returncode == 1, done.stdout
        assert _said(done.stdout) == (
            f"BROKEN: The audit log does not extend the checkpoint in {path} (signed on "
            f"{today}) at record {seq}: {reason_for[seq]}"
        )


def test_a_rollback_with_deleted_records_is_caught_by_every_witness(witnessed: Witnessed) -> None:
    w = witnessed
    admin, old_anchor, exported, siem, rolled_to, exported_seq, remembered_seq = _setup_witnesses(w)
    _roll_back_and_delete(w.platform, old_anchor, rolled_to)
    _act(admin)  # the platform signs the forged head
    forged_seq = rolled_to + 1
    # The sinks saw the record count go backwards: that alone is worth an alert in the SIEM.
    resigned = w.collector.wait_for_seq(forged_seq)
    seen = [m.seq for m in w.collector.messages()]
    assert seen[-1] == forged_seq < max(seen)
    assert resigned.fields["key"] == key_fingerprint(resigned.document["public_key"])
    metrics = httpx.get(
        f"{w.platform.url}/metrics", verify=w.platform.ssl_context(), timeout=10
    ).text
    sent = re.search(
        rf'tether_checkpoint_sink_sent_total{{sink="syslog {re.escape(w.collector.url)}"}} (\S+)',
        metrics,
    )
    assert sent is not None, metrics
    assert float(sent[1]) >= len(seen)
    assert f'tether_checkpoint_sink_dropped_total{{sink="file {w.sink_file}"}} 0.0' in metrics

    def gone(_seq: int, head: int) -> str:
        return f"the log ends at record {head}, before it; records were deleted."

    _assert_fooled_alone_caught_by_witnesses(
        w,
        admin,
        {
            "exported": (exported, exported_seq),
            "syslog": (siem, remembered_seq),
            "json sink": (w.sink_file, remembered_seq),
        },
        remembered_seq,
        gone,
    )


def test_a_rollback_with_rewritten_records_is_caught_by_every_witness(
    witnessed: Witnessed,
) -> None:
    w = witnessed
    admin, old_anchor, exported, siem, rolled_to, exported_seq, remembered_seq = _setup_witnesses(w)
    _roll_back_and_rewrite(w.platform, old_anchor, rolled_to)
    _act(admin)

    def rewritten(seq: int, _head: int) -> str:
        return (
            f"record {seq} now has a different hash; records were rewritten or the checkpoint "
            "was rolled back."
        )

    _assert_fooled_alone_caught_by_witnesses(
        w,
        admin,
        {"exported": (exported, exported_seq), "syslog": (siem, remembered_seq)},
        remembered_seq,
        rewritten,
    )


def test_a_collector_address_that_is_not_one_is_refused_at_init(
    tmp_path: Path, children: Children
) -> None:
    platform = Platform(tmp_path, children)
    platform.init_args = ["--checkpoint-syslog", "udp://siem:514"]
    with pytest.raises(AssertionError) as failed:
        platform.init()
    assert _said(str(failed.value)).endswith(
        "'udp://siem:514' is not a syslog collector address like tls://siem.example:6514 or "
        "tcp://siem.example:601."
    )
    assert not (platform.data / "config.json").exists()


def test_a_malformed_or_foreign_checkpoint_file_is_refused_in_one_sentence(
    admin: Cli, tmp_path: Path
) -> None:
    malformed = tmp_path / "cp.json"
    malformed.write_text('{"seq": 12, "hash": "not a hash"}')
    done = admin.run("audit", "verify", "--checkpoint", str(malformed))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"tether: {malformed} is not an audit checkpoint; give the file 'tether audit checkpoint "
        "export' wrote or a line a checkpoint sink sent."
    )
    exported = json.loads(admin.ok("audit", "checkpoint", "export"))
    CheckpointSigner.create_key(tmp_path / "other.key")
    other = CheckpointSigner(tmp_path / "other.key", tmp_path / "other-anchor.json")
    forged = other.sign(exported["seq"], exported["hash"], datetime.now(UTC))
    foreign = tmp_path / "foreign.json"
    foreign.write_text(checkpoint_document(forged, other.public_key_pem(), "elsewhere"))
    done = admin.run("audit", "verify", "--checkpoint", str(foreign))
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip() == (
        f"tether: {foreign} was signed by another audit key than this platform's, so it cannot "
        "witness this log."
    ), done.stdout
