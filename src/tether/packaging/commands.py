"""`tether agent bundle` and `tether agent package`, run on the platform host.

Part of the `tether agent` group in the full install (`tether.main` adds them); the agent's own
command (`tether-agent`) has neither, and nothing here is frozen into the bundle.
"""

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.times import parse_duration
from tether.packaging.errors import PackagingError

CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache", help="Where built bundles are kept (default $TETHER_BUNDLE_CACHE or ~/.cache)."
    ),
]


def bundle(
    output: Annotated[Path, typer.Option("--output", help="A new directory for the bundle.")],
    cache: CacheOpt = None,
) -> None:
    """Freeze the agent with its own Python into a directory (built once per source version)."""
    from tether.packaging.bundle import build_bundle, copy_bundle

    built = build_bundle(cache)
    copy_bundle(built, output)
    how = f"built in {built.seconds:.0f} s" if built.built_now else "from the cache"
    typer.echo(f"Agent bundle {built.key} ({how}) in {output}; run {output}/tether-agent --help.")


def package(
    data: Annotated[Path, typer.Option("--data", help="The platform's data directory.")],
    fmt: Annotated[str, typer.Option("--format", help="deb, rpm or tar.")],
    segment: Annotated[str, typer.Option(help="Device segment the installed hosts join.")],
    output: Annotated[Path, typer.Option("--output", help="The package file to write.")],
    uses: Annotated[int, typer.Option(help="How many endpoints may enroll with it.")] = 1,
    expires: Annotated[str, typer.Option(help="Token lifetime: 30m, 24h, 7d.")] = "7d",
    cache: CacheOpt = None,
    bundle_dir: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="zip only: the Windows bundle directory built on a Windows host "
            "(tether agent bundle there).",
        ),
    ] = None,
) -> None:
    """Build an agent package that enrolls into SEGMENT at install (a fresh, audited token)."""
    from tether.packaging.bundle import build_bundle
    from tether.packaging.packages import FORMATS, build_package, missing_tool
    from tether.packaging.windows import build_zip, bundle_files

    try:
        from tether.server.config import load_settings
        from tether.server.services.package_tokens import issue_package_token
    except ImportError as exc:
        raise PackagingError(
            "Packages are built on the platform host; install tether[platform] there."
        ) from exc

    if fmt not in (*FORMATS, "zip"):
        raise PackagingError(f"{fmt!r} is not a package format; choose deb, rpm, tar or zip.")
    if (fmt == "zip") != (bundle_dir is not None):
        raise PackagingError(
            "A zip (Windows) package needs --bundle, the bundle built on a Windows host; "
            "deb, rpm and tar packages are built from this host's bundle, without --bundle."
        )
    if bundle_dir is not None:
        bundle_files(bundle_dir)
    missing = None if fmt == "zip" else missing_tool(fmt)  # type: ignore[arg-type]
    if missing is not None:
        raise PackagingError(
            f"Building a {fmt} package needs {missing}; install it with the system's package manager."
        )
    if output.exists():
        raise PackagingError(f"{output} already exists; choose another output file.")
    lifetime = timedelta(seconds=parse_duration(expires))
    settings = load_settings(data.resolve())
    # The bundle first: a failed build must not leave an unused token behind.
    bundle = bundle_dir if bundle_dir is not None else build_bundle(cache).directory
    issued = issue_package_token(
        settings, segment=segment, uses=uses, lifetime=lifetime, package_format=fmt
    )
    if fmt == "zip":
        import tether

        build_zip(bundle, issued.token, output, tether.__version__)
    else:
        build_package(fmt, bundle, issued.token, output)  # type: ignore[arg-type]
    typer.echo(
        f"{output}: enrolls into segment {issued.segment} ({issued.max_uses} use(s), token "
        f"{issued.id} expires {issued.expires_at:%Y-%m-%d %H:%M} UTC)."
    )
