"""`tether audit export` with the Session History's filters."""

import json
from datetime import UTC, datetime, timedelta

from tether.server.services.platform import Platform

from .conftest import Cli


async def _records(platform: Platform) -> None:
    audit = platform.audit
    await audit.record("job.submit", actor="rita", target="host:h-1", source="test")
    await audit.record("file.download", actor="sam", target="file:f-1", source="test")
    await audit.record("job.cancel", actor="sam", target="host:h-2", source="test")


def _exported(out: str) -> list[tuple[str, str]]:
    return [(r["actor"], r["action"]) for r in map(json.loads, out.splitlines())]


async def test_export_narrows_to_the_filters_and_keeps_the_whole_chain_without(
    cli: Cli, platform: Platform
) -> None:
    await _records(platform)
    everything = await cli("audit", "export", "--jsonl")
    assert everything.code == 0, everything.stderr
    seqs = [json.loads(line)["seq"] for line in everything.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))

    by_sam = await cli("audit", "export", "--user", "sam")
    assert _exported(by_sam.stdout) == [("sam", "file.download"), ("sam", "job.cancel")]
    jobs = await cli("audit", "export", "--kind", "job", "--user", "s")
    assert _exported(jobs.stdout) == [("sam", "job.cancel")]
    about_host = await cli("audit", "export", "--host", "h-1")
    assert _exported(about_host.stdout) == [("rita", "job.submit")]

    recent = await cli("audit", "export", "--since", "1h", "--action", "job.")
    assert _exported(recent.stdout) == [("rita", "job.submit"), ("sam", "job.cancel")]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await cli("audit", "export", "--since", tomorrow)).stdout == ""
    until_then = await cli("audit", "export", "--until", tomorrow, "--user", "rita")
    assert _exported(until_then.stdout) == [("rita", "job.submit")]


async def test_a_time_that_is_not_one_is_refused_in_one_sentence(cli: Cli) -> None:
    done = await cli("audit", "export", "--since", "yesterday")
    assert done.code != 0
    assert done.stderr.strip().endswith(
        "'yesterday' is neither a time with a zone like 2026-12-01T08:00Z nor a duration like "
        "24h or 7d."
    )
    assert done.stdout == ""


async def test_the_export_writes_what_a_terminal_would_act_on_as_json_escapes(
    cli: Cli, platform: Platform
) -> None:
    """A record quoting an endpoint's words (a hostname with a right-to-left override and an
    8-bit CSI) prints harmlessly, and a SIEM parsing the line reads the very same value."""
    named = "ws-01\u202eexe.gpj\x9b2J\x1b]0;t\x07"
    await platform.audit.record(
        "isolation.reported",
        actor="endpoint",
        target="host:h-9",
        source="endpoint",
        details={"named": named},
    )
    out = (await cli("audit", "export", "--action", "isolation.")).stdout
    assert not [c for c in ("\u202e", "\x9b", "\x1b", "\x07") if c in out]
    assert "ws-01\\u202eexe.gpj\\u009b2J\\u001b]0;t\\u0007" in out
    (record,) = map(json.loads, out.splitlines())
    assert record["details"]["named"] == named
