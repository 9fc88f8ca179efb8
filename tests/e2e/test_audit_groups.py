"""kill -9 in the middle of grouped audit appends (docs/adr/0053).

Audit records written on their own are committed in groups; a request answers only once its own
record is committed. So whatever the platform answered before it was killed must be in the chain
after a restart, and the chain must verify.
"""

import signal
import threading
import time
from pathlib import Path

import httpx

from .harness import Children, Platform, audit_records

CLIENTS = 12


def test_every_action_answered_before_a_kill_has_its_record_and_the_chain_verifies(
    tmp_path: Path,
) -> None:
    children = Children(tmp_path / "logs")
    try:
        platform = Platform(tmp_path, children)
        platform.init()
        platform.start()
        admin = platform.login(tmp_path / "admin-cli")
        answered: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def analyst(n: int) -> None:
            # Each request names itself in its user agent, which its record's source keeps.
            with admin.api() as api:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    name = f"kill-{n}-{i}"
                    try:
                        reply = api.post(
                            "/hosts/ping",
                            json={"hosts": [], "timeout_seconds": 1},
                            headers={"user-agent": name},
                        )
                    except httpx.HTTPError:
                        failed.append(name)
                        return
                    if reply.status_code == 200:
                        answered.append(name)
                    else:
                        failed.append(f"{name}: {reply.status_code}")

        threads = [threading.Thread(target=analyst, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Killed with requests in flight: some are never answered, and need not be on record.
        platform.stop(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(30)
        acknowledged = set(answered)
        assert len(acknowledged) >= 150, failed[:5]

        platform.start()
        records = audit_records(admin)
        pings = [r for r in records if r["action"] == "hosts.ping"]
        sources = {r["source"].rpartition(" ")[2] for r in pings}
        missing = sorted(acknowledged - sources)
        assert not missing, f"{len(missing)} answered actions have no record: {missing[:5]}"
        # Each request wrote one record, never two.
        named = [r["source"].rpartition(" ")[2] for r in pings if "kill-" in r["source"]]
        assert len(named) == len(set(named))
        with admin.api() as api:
            verdict = api.get("/audit/verify")
        verdict.raise_for_status()
        assert verdict.json()["intact"], verdict.json()["problem"]
        assert verdict.json()["records"] == len(records)
    finally:
        children.kill_all()
