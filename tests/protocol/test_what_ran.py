"""What a job ran, named as the responder typed or chose it."""

from tether.protocol.shell import cat_command, python_command
from tether.protocol.what_ran import MAX_CHARS, what_ran


def test_shell_commands_are_named_as_typed() -> None:
    assert what_ran("script.run", cat_command("/etc/hosts").args) == "cat /etc/hosts"
    assert what_ran("script.run", python_command("import os; os.getpid()").args) == (
        "py import os; os.getpid()"
    )
    assert what_ran("files.list", {"path": "/var/log"}) == "files.list /var/log"
    assert what_ran("processes.kill", {"pid": 42, "tree": False}) == "processes.kill 42"
    assert what_ran("processes.list", {}) == "processes.list"
    assert what_ran("isolation.isolate", {"mode": "full", "allow": []}) == (
        "isolation.isolate full"
    )


def test_a_script_is_named_with_its_parameters() -> None:
    library = {"source": "x", "name": "Process Control v3", "params": {"name": "sshd", "n": 2}}
    assert what_ran("script.run", library) == "script Process Control v3 (name=sshd, n=2)"
    assert what_ran("script.run", {"source": "x", "params": {}}) == "script (own source)"


def test_a_script_cannot_pose_as_a_shell_command_and_names_stay_one_short_line() -> None:
    # A hand-written source that merely starts like the shell's cat is not named as one.
    posing = cat_command("/etc/hosts").args["source"] + "import os\n"
    assert what_ran("script.run", {"source": posing}) == "script (own source)"
    long = what_ran("files.get", {"path": "/tmp/" + "a" * 500 + "\nforged line"})
    assert len(long) == MAX_CHARS
    assert long.endswith("…")
    assert "\n" not in long
