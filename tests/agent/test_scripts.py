"""run_script with real child processes: channel calls, streaming, limits, cancel, tree kill."""

import asyncio
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import tether.agent.script_process
import tether.agent.scripts
from tests.agent.script_recorder import Recorder, is_gone, wait_gone
from tether.agent.scripts import ScriptLimits, syntax_error

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX process tests")


async def test_params_round_trip_through_the_channel() -> None:
    params = {"paths": ["/tmp/a", "C:\\b"], "depth": 3, "deep": {"ok": True}, "name": "naïve ☃"}
    recorder = Recorder()
    outcome = await recorder.run(
        "import json\nfrom tether.script import params\nprint(json.dumps(params))\n", params
    )
    assert outcome.error is None
    assert outcome.exit_code == 0
    assert json.loads(recorder.text("stdout")) == params


async def test_rows_and_log_lines_reach_the_agent_in_order() -> None:
    recorder = Recorder()
    outcome = await recorder.run(
        "from tether.script import row, log\n"
        "row(pid=1, name='init', ratio=0.5, ok=True, note=None)\n"
        "log('half way')\n"
        "row(pid=2, name='kthreadd', ratio=1.5, ok=False, note='x')\n"
    )
    assert outcome.exit_code == 0
    assert recorder.rows == [
        {"pid": 1, "name": "init", "ratio": 0.5, "ok": True, "note": None},
        {"pid": 2, "name": "kthreadd", "ratio": 1.5, "ok": False, "note": "x"},
    ]
    assert recorder.logs == ["half way"]


async def test_a_row_with_a_nested_value_is_a_script_error() -> None:
    recorder = Recorder()
    outcome = await recorder.run(
        "from tether.script import row, ScriptError\n"
        "try:\n    row(bad={'nested': 1})\nexcept ScriptError as e:\n    print('refused:', e)\n"
    )
    assert outcome.exit_code == 0
    assert "refused: Row field 'bad' must be a string, number, boolean or null" in recorder.text(
        "stdout"
    )
    assert recorder.rows == []


async def test_output_streams_while_the_script_is_still_running() -> None:
    recorder = Recorder()
    outcome = await recorder.run("import time\nprint('first')\ntime.sleep(0.3)\nprint('second')\n")
    ended = time.monotonic()
    assert outcome.exit_code == 0
    assert recorder.text("stdout") == "first\nsecond\n"
    first_seen = next(at for _, text, at in recorder.chunks if "first" in text)
    assert ended - first_seen >= 0.25


async def test_stderr_is_kept_apart_from_stdout() -> None:
    recorder = Recorder()
    await recorder.run("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n")
    assert recorder.text("stdout") == "to out\n"
    assert recorder.text("stderr") == "to err\n"


async def test_a_non_zero_exit_code_is_reported() -> None:
    recorder = Recorder()
    outcome = await recorder.run("import sys\nsys.exit(7)\n")
    assert outcome.exit_code == 7
    assert outcome.error == "The script exited with code 7."
    assert not outcome.timed_out
    assert not outcome.cancelled


async def test_an_exception_prints_the_scripts_traceback_and_exits_1() -> None:
    recorder = Recorder()
    outcome = await recorder.run("x = 1\nraise ValueError('boom')\n")
    stderr = recorder.text("stderr")
    assert outcome.exit_code == 1
    assert "Traceback (most recent call last)" in stderr
    assert "line 2, in <module>" in stderr
    assert "ValueError: boom" in stderr
    # The launcher's own frames are not shown to the analyst.
    assert "runpy" not in stderr
    assert "_launch" not in stderr


async def test_a_syntax_error_is_reported_without_starting_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(tether.agent.script_process, "spawn", no_spawn)
    outcome = await Recorder().run("x = 1\ny = 2\nif x\n    pass\n")
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert outcome.error.startswith("The script has a syntax error on line 3: ")
    assert outcome.error.endswith(".")


def test_syntax_error_of_null_bytes_is_a_sentence_too() -> None:
    error = syntax_error("x = 1\x00")
    assert error is not None
    assert error.startswith("The script ")
    assert syntax_error("x = 1\n") is None


async def test_the_private_directory_is_the_workdir_and_is_removed_afterwards() -> None:
    recorder = Recorder()
    outcome = await recorder.run(
        "import os, stat\n"
        "here = os.getcwd()\n"
        "print(here)\n"
        "print(oct(stat.S_IMODE(os.stat(here).st_mode)))\n"
        "print(sorted(os.listdir(here)))\n"
    )
    assert outcome.exit_code == 0
    here, mode, listing = recorder.text("stdout").splitlines()
    assert mode == "0o700"
    assert listing == "['channel.sock', 'script.py']"
    assert not Path(here).exists()


async def test_a_given_workdir_is_used(tmp_path: Path) -> None:
    recorder = Recorder()
    await recorder.run("import os\nprint(os.getcwd())\n", workdir=tmp_path)
    assert recorder.text("stdout").strip() == str(tmp_path)


async def test_timeout_kills_the_whole_tree_including_grandchildren() -> None:
    recorder = Recorder()
    source = (
        "import subprocess, time\n"
        # A grandchild: sh waits for its sleep.
        "sh = subprocess.Popen(['sh', '-c', 'sleep 300 & echo $!; wait'], stdout=subprocess.PIPE)\n"
        "print('grandchild', sh.stdout.readline().decode().strip(), flush=True)\n"
        # A double fork: sh exits at once, its sleep is orphaned but stays in the group.
        "orphan = subprocess.run(['sh', '-c', 'sleep 300 > /dev/null 2>&1 & echo $!'], capture_output=True)\n"
        "print('orphan', orphan.stdout.decode().strip(), flush=True)\n"
        "print('child', sh.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    outcome = await recorder.run(source, limits=ScriptLimits(timeout_seconds=1.5))
    assert time.monotonic() - started < 10
    assert outcome.timed_out
    assert not outcome.cancelled
    assert outcome.error == (
        "The script ran longer than its time limit of 1.5 seconds and was stopped."
    )
    pids = dict(line.split() for line in recorder.text("stdout").splitlines())
    assert set(pids) == {"grandchild", "orphan", "child"}
    for pid in pids.values():
        assert await wait_gone(int(pid)), f"process {pid} survived the timeout"


async def test_a_process_that_leaves_the_group_is_still_killed_on_timeout() -> None:
    recorder = Recorder()
    source = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    outcome = await recorder.run(source, limits=ScriptLimits(timeout_seconds=1.5))
    assert outcome.timed_out
    assert await wait_gone(int(recorder.text("stdout")))


async def test_cancel_kills_the_tree() -> None:
    recorder = Recorder()
    cancel = asyncio.Event()
    source = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )

    async def cancel_when_started() -> None:
        while not recorder.text("stdout").endswith("\n"):
            await asyncio.sleep(0.02)
        cancel.set()

    canceller = asyncio.create_task(cancel_when_started())
    started = time.monotonic()
    outcome = await recorder.run(source, cancel=cancel)
    await canceller
    assert time.monotonic() - started < 10
    assert outcome.cancelled
    assert not outcome.timed_out
    assert outcome.error == "The script was cancelled and stopped."
    assert await wait_gone(int(recorder.text("stdout")))


async def test_cancelling_run_script_itself_kills_the_script() -> None:
    recorder = Recorder()
    source = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(300)\n"
    task = asyncio.create_task(recorder.run(source))
    while not recorder.text("stdout").endswith("\n"):
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(int(recorder.text("stdout")))


async def test_what_a_script_leaves_running_is_killed_when_it_exits() -> None:
    recorder = Recorder()
    source = "import subprocess\nprint(subprocess.Popen(['sleep', '300']).pid)\n"
    started = time.monotonic()
    outcome = await recorder.run(source)
    assert time.monotonic() - started < 5
    assert outcome.exit_code == 0
    assert await wait_gone(int(recorder.text("stdout")))


async def test_a_detached_process_holding_stdout_does_not_hold_up_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tether.agent.scripts, "DRAIN_SECONDS", 0.5)
    recorder = Recorder()
    source = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
    )
    started = time.monotonic()
    outcome = await recorder.run(source)
    pid = int(recorder.text("stdout"))
    try:
        assert outcome.exit_code == 0
        assert time.monotonic() - started < tether.agent.scripts.DRAIN_SECONDS + 2
        # It left the script's session on purpose, as a launched service would: it is spared.
        assert not is_gone(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


async def test_output_past_the_limit_is_dropped_with_one_notice() -> None:
    limit = 1024 * 1024
    recorder = Recorder(keep_output=False)
    source = (
        "import sys\n"
        "block = 'x' * (1024 * 1024)\n"
        "for _ in range(50):\n    sys.stdout.write(block)\n"
        "print('done', file=sys.stderr)\n"
    )
    tracemalloc.start()
    try:
        started = time.monotonic()
        outcome = await recorder.run(source, limits=ScriptLimits(20.0, max_output_bytes=limit))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    notice = f"Output limit of {limit} bytes reached; further output dropped."
    assert outcome.exit_code == 0
    assert outcome.output_truncated
    assert outcome.error == notice
    assert elapsed < 10
    # 50 MiB went through the pipe; the agent kept a few chunks at a time, not the output.
    assert peak < 8 * 1024 * 1024
    assert limit <= recorder.output_bytes <= limit + len(notice) + 2


async def test_the_notice_is_sent_once_on_stderr() -> None:
    recorder = Recorder()
    source = "import sys\nfor _ in range(20):\n    print('y' * 99)\n    print('z' * 99, file=sys.stderr)\n"
    outcome = await recorder.run(source, limits=ScriptLimits(20.0, max_output_bytes=1000))
    assert outcome.output_truncated
    assert recorder.text("stderr").count("Output limit of 1000 bytes reached") == 1
    forwarded = len(recorder.text("stdout")) + len(
        recorder.text("stderr").split("\nOutput limit")[0]
    )
    assert forwarded == 1000


async def test_rows_past_the_limit_are_refused() -> None:
    recorder = Recorder()
    source = (
        "from tether.script import row, ScriptError\n"
        "refused = 0\n"
        "for i in range(5):\n"
        "    try:\n        row(i=i)\n"
        "    except ScriptError as e:\n        refused += 1\n        last = str(e)\n"
        "print(refused, last)\n"
    )
    outcome = await recorder.run(source, limits=ScriptLimits(20.0, max_rows=3))
    assert recorder.rows == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert outcome.rows_truncated
    assert outcome.error == "Row limit of 3 rows reached; further rows dropped."
    assert recorder.text("stdout") == "2 Row limit of 3 rows reached; further rows dropped.\n"


async def test_the_runs_channel_refuses_a_connection_with_a_wrong_secret() -> None:
    recorder = Recorder()
    source = (
        "import json, os, socket\n"
        "from tether.script import channel\n"
        "kind, where = channel.parse_address(os.environ[channel.ENV_ADDRESS])\n"
        "sock = socket.socket(socket.AF_UNIX)\n"
        "sock.connect(where)\n"
        "reader = sock.makefile('rb')\n"
        "challenge = channel.read_challenge(reader.readline())\n"
        # A proof made without the secret.
        'sock.sendall(b\'{"id": 1, "method": "hello", "args": {"proof": "\' + b\'0\' * 64 + b\'"}}\\n\')\n'
        "print(json.loads(reader.readline()))\n"
        "print(reader.readline())\n"
        "from tether.script import row\n"
        "row(still='works')\n"
    )
    outcome = await recorder.run(source)
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert recorder.text("stdout") == ("{'id': 1, 'error': 'The channel secret is wrong.'}\nb''\n")
    # The refused connection changed nothing for the script's own, authenticated one.
    assert recorder.rows == [{"still": "works"}]


async def test_a_missing_interpreter_is_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    outcome = await Recorder().run("pass\n")
    assert outcome.exit_code is None
    assert outcome.error == (
        "The agent could not start Python for the script: No such file or directory."
    )


async def test_upload_and_download_go_to_the_services_with_absolute_paths(tmp_path: Path) -> None:
    recorder = Recorder()
    source = (
        "from tether.script import upload, download\n"
        "print(upload('evidence.bin')['sha256'])\n"
        f"print(download('tool.exe', {str(tmp_path / 'tool.exe')!r})['size'])\n"
    )
    outcome = await recorder.run(source, workdir=tmp_path)
    assert outcome.exit_code == 0
    assert recorder.text("stdout") == f"{'ab' * 32}\n5\n"
    assert recorder.services.calls == [
        ("upload", (str(tmp_path / "evidence.bin"),)),
        ("download", ("tool.exe", str(tmp_path / "tool.exe"))),
    ]


async def test_service_errors_become_script_errors() -> None:
    recorder = Recorder()
    source = (
        "from tether.script import upload, download, ScriptError\n"
        "for call in (lambda: upload('/nowhere/missing'), lambda: download('missing', '/tmp/x')):\n"
        "    try:\n        call()\n"
        "    except ScriptError as e:\n        print(type(e).__name__, e)\n"
    )
    outcome = await recorder.run(source)
    assert outcome.exit_code == 0
    assert recorder.text("stdout") == (
        "ScriptError No file at /nowhere/missing.\n"
        "ScriptError The library has no file named missing.\n"
    )


async def test_an_unanswerable_parameter_set_is_refused_before_starting() -> None:
    outcome = await Recorder().run("pass\n", {"when": object()})
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert outcome.error.startswith("The script parameters cannot be sent as JSON")


async def test_a_script_can_fork_and_use_the_channel_from_the_child() -> None:
    recorder = Recorder()
    source = (
        "import os\nfrom tether.script import row\n"
        "row(who='parent')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    row(who='child')\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\nrow(who='parent again')\n"
    )
    outcome = await recorder.run(source)
    assert outcome.exit_code == 0
    assert recorder.rows == [{"who": "parent"}, {"who": "child"}, {"who": "parent again"}]


def test_is_gone_sees_a_live_process() -> None:
    assert not is_gone(os.getpid())


async def test_isolation_calls_go_to_the_services() -> None:
    recorder = Recorder()
    source = (
        "from tether.script import isolate, unisolate, isolation_status, ScriptError\n"
        "print(isolate('full')['mode'], isolation_status()['isolated'], unisolate()['isolated'])\n"
        "try:\n    isolate('sideways')\nexcept ScriptError as e:\n    print(e)\n"
    )
    outcome = await recorder.run(source)
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert recorder.text("stdout") == (
        "full False False\nThe isolation mode is 'outbound' or 'full'.\n"
    )
    assert [call[0] for call in recorder.services.calls] == [
        "isolate",
        "isolation_status",
        "unisolate",
        "isolate",
    ]
