"""The openat walk: a folder reached without following a link in any component."""

import errno
import os
import sys
from pathlib import Path

import pytest

from tether.agent.path_walk import UnsafePath, open_folder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the openat walk is POSIX")


def link_sentence(link: Path, target: Path) -> str:
    return (
        f"Nothing was written: {link} is a symbolic link (to {target}), and the agent does not "
        "follow links in a path it writes to."
    )


def test_a_plain_folder_is_opened_and_used_by_name(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with open_folder(tmp_path / "a" / "b") as folder:
        fd = folder.open("new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"hello")
        os.close(fd)
        folder.replace("new.txt", "final.txt")
        folder.fsync()
        info = folder.lstat("final.txt")
        assert info is not None
        assert info.st_size == 5
        assert folder.lstat("missing") is None
    assert (tmp_path / "a" / "b" / "final.txt").read_bytes() == b"hello"


def test_a_link_in_an_intermediate_component_is_refused(tmp_path: Path) -> None:
    protected = tmp_path / "protected"
    protected.mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "drop").symlink_to(protected)
    with pytest.raises(UnsafePath) as refused:
        open_folder(tmp_path / "x" / "drop" / "sub")
    assert str(refused.value) == link_sentence(tmp_path / "x" / "drop", protected)


def test_a_link_as_the_folder_itself_is_refused(tmp_path: Path) -> None:
    protected = tmp_path / "protected"
    protected.mkdir()
    (tmp_path / "drop").symlink_to(protected)
    with pytest.raises(UnsafePath) as refused:
        open_folder(tmp_path / "drop")
    assert str(refused.value) == link_sentence(tmp_path / "drop", protected)


def test_a_relative_link_is_named_as_it_is_stored(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "rel").symlink_to("real")
    with pytest.raises(UnsafePath) as refused:
        open_folder(tmp_path / "rel")
    assert str(refused.value) == link_sentence(tmp_path / "rel", Path("real"))


def test_a_link_high_up_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "real" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "top").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match=r"/top is a symbolic link"):
        open_folder(tmp_path / "top" / "deep" / "er")


def test_missing_and_non_folder_components_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath) as missing:
        open_folder(tmp_path / "nope" / "deeper")
    assert str(missing.value) == f"The folder {tmp_path / 'nope'} does not exist on the endpoint."
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UnsafePath) as plain:
        open_folder(tmp_path / "plain" / "deeper")
    assert str(plain.value) == f"{tmp_path / 'plain'} is not a folder on the endpoint."


def test_a_relative_folder_is_refused() -> None:
    with pytest.raises(UnsafePath, match="is not absolute on this endpoint"):
        open_folder(Path("relative/folder"))


def test_names_opened_in_the_folder_are_not_followed_either(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    with (
        open_folder(tmp_path) as folder,
        pytest.raises(OSError, match="Too many levels of symbolic links") as refused,
    ):
        folder.open("link", os.O_WRONLY)
    assert refused.value.errno == errno.ELOOP
    assert victim.read_text() == "keep"


def test_the_opened_folder_stays_put_when_its_path_is_re_linked(tmp_path: Path) -> None:
    """Swapping a component for a link after the walk changes nothing: the descriptor is kept."""
    checked = tmp_path / "drop"
    checked.mkdir()
    protected = tmp_path / "protected"
    protected.mkdir()
    with open_folder(checked) as folder:
        checked.rename(tmp_path / "moved")
        checked.symlink_to(protected)
        fd = folder.open("file", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.close(fd)
    assert list(protected.iterdir()) == []
    assert (tmp_path / "moved" / "file").exists()


def test_a_closed_folder_is_never_used_by_path(tmp_path: Path) -> None:
    folder = open_folder(tmp_path)
    folder.close()
    with pytest.raises(ValueError, match="was closed"):
        folder.lstat("anything")
