"""`tether agent upgrade-bundle`: the agent bundle as the archive `tether agent upgrade` sends.

The archive is `tether-agent/` (the bundle directory, as `tether agent bundle` writes it) with a
`VERSION` file in it, gzip-compressed. The version is the installed tether's unless given: a
re-versioned bundle is the same build under another version string, which is how a rollout is
rehearsed and how the tests see an upgrade take (docs/adr/0051).
"""

import io
import tarfile
from pathlib import Path
from typing import Annotated

import typer

import tether
from tether.packaging.commands import CacheOpt
from tether.packaging.errors import PackagingError
from tether.protocol.upgrade import BUNDLE_DIRECTORY, VERSION_FILE, valid_version


def write_upgrade_archive(bundle: Path, output: Path, version: str) -> Path:
    """Write `bundle` (a bundle directory) with VERSION = `version` to `output` (.tar.gz)."""
    if not valid_version(version):
        raise PackagingError(
            f"{version!r} is not a valid agent version: letters, digits and . + ~ _ - only, "
            "at most 64, starting with a letter or digit."
        )
    if output.exists():
        raise PackagingError(f"{output} already exists; choose another output file.")
    partial = output.with_name(f".{output.name}.partial")
    try:
        # Level 6, as the packages use: level 9 took 3x longer here for 1% less.
        with tarfile.open(partial, "w:gz", compresslevel=6) as archive:
            for path in sorted(bundle.rglob("*")):
                relative = path.relative_to(bundle)
                if relative.parts == (VERSION_FILE,):
                    continue
                archive.add(path, arcname=f"{BUNDLE_DIRECTORY}/{relative}", recursive=False)
            stamp = (version + "\n").encode("ascii")
            info = tarfile.TarInfo(f"{BUNDLE_DIRECTORY}/{VERSION_FILE}")
            info.size = len(stamp)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(stamp))
        partial.rename(output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def upgrade_bundle(
    output: Annotated[Path, typer.Option("--output", help="The archive to write (.tar.gz).")],
    version: Annotated[
        str | None,
        typer.Option(help="The version the bundle reports (default: the installed tether's)."),
    ] = None,
    cache: CacheOpt = None,
) -> None:
    """Build the agent bundle (once per source version) as an archive for 'tether agent upgrade'."""
    from tether.packaging.bundle import build_bundle

    built = build_bundle(cache)
    chosen = version or tether.__version__
    write_upgrade_archive(built.directory, output, chosen)
    size = output.stat().st_size / (1024 * 1024)
    typer.echo(f"{output}: agent bundle {built.key}, version {chosen}, {size:.1f} MiB.")
