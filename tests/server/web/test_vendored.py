"""Every vendored file is listed with its version, license and source, and matches its hash."""

import hashlib
import json

from tether.server.web.templating import ENVIRONMENT, STATIC

VENDOR = STATIC / "vendor"


def test_every_vendored_file_matches_its_recorded_hash() -> None:
    manifest = json.loads((VENDOR / "VENDORED.json").read_text())
    listed = {entry["file"]: entry for entry in manifest["files"]}
    on_disk = {p.name for p in VENDOR.iterdir() if p.name != "VENDORED.json"}
    assert set(listed) == on_disk
    for name, entry in listed.items():
        assert entry["version"]
        assert entry["license"]
        assert entry["source"].startswith("https://")
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} differs from the recorded file"


def test_the_pages_load_the_vendored_htmx() -> None:
    assert (STATIC / str(ENVIRONMENT.globals["htmx"])).is_file()
