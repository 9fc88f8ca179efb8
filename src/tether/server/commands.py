"""`tether server init` and `tether server run`: the operator's side of the platform.

Heavy imports happen inside the commands, so the analyst CLI stays fast to start.
"""

from pathlib import Path
from typing import Annotated

import typer

server_app = typer.Typer(help="Create and run a Tether platform.", no_args_is_help=True)
DataOpt = Annotated[Path, typer.Option("--data", help="The platform's data directory.")]


def mfa_file_for(password_file: Path) -> Path:
    """Where init writes the admin's second factor: next to the password file."""
    return password_file.with_name(password_file.name + ".mfa.json")


@server_app.command("init")
def init(
    data: DataOpt,
    hostname: Annotated[str, typer.Option(help="Name agents and analysts use to reach it.")],
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Extra address for the cert.")
    ] = None,
    listen: Annotated[str, typer.Option(help="Analyst port HOST:PORT.")] = "127.0.0.1:8443",
    agent_listen: Annotated[str, typer.Option(help="Agent port HOST:PORT.")] = "127.0.0.1:8444",
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL (default: SQLite in the data directory).")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL of the bus between platform processes: needed for --role api|gateway "
            "and for several nodes (docs/operations.md, 'Several nodes')."
        ),
    ] = None,
    node_name: Annotated[
        str | None,
        typer.Option(help="The name the hosts list shows for this node (several nodes)."),
    ] = None,
    file_store_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory of the file store (default: files/ in the data directory); several "
            "nodes on different machines share one, e.g. an NFS mount."
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="Address or network of a reverse proxy whose X-Forwarded-For names the client "
            "(repeat for several; none by default).",
        ),
    ] = None,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(
            help="Write the admin password here and its second factor (TOTP secret, URI, "
            "recovery codes) to FILE.mfa.json, both mode 0600."
        ),
    ] = None,
    checkpoint_syslog: Annotated[
        str,
        typer.Option(
            help="Send every signed audit checkpoint to this syslog collector "
            "(tls://HOST:PORT or tcp://HOST:PORT; RFC 5424, octet-counted)."
        ),
    ] = "",
    checkpoint_syslog_ca: Annotated[
        Path | None,
        typer.Option(help="CA certificate (PEM) of a tls:// collector (default: system CAs)."),
    ] = None,
    checkpoint_file: Annotated[
        Path | None,
        typer.Option(help="Append every signed audit checkpoint to this file as a JSON line."),
    ] = None,
    agent_address: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-address",
            help="An agent port HOST:PORT agents may dial (repeat for each node, or name one "
            "load balancer); enrolled agents get the list and try it in turn. Default: the "
            "agent port's own address.",
        ),
    ] = None,
) -> None:
    """Create the CA, the server certificate, the database and the first admin user."""
    import json

    from pydantic import ValidationError

    from tether.server.config import Settings, settings_error
    from tether.server.services.bootstrap import check_witness_options, initialise
    from tether.server.services.pki import write_private

    try:
        settings = Settings(
            data_dir=data.resolve(),
            hostname=hostname,
            listen=listen,
            agent_listen=agent_listen,
            database_url=database_url or "",
            redis_url=redis_url or "",
            node_name=node_name or "",
            file_store_dir=str(file_store_dir.resolve()) if file_store_dir else "",
            checkpoint_syslog=checkpoint_syslog,
            checkpoint_syslog_ca=str(checkpoint_syslog_ca.resolve())
            if checkpoint_syslog_ca
            else "",
            checkpoint_file=str(checkpoint_file.resolve()) if checkpoint_file else "",
            trusted_proxies=trusted_proxy or [],
        )
    except ValidationError as exc:
        raise settings_error(exc) from exc
    check_witness_options(settings)
    from tether.server.errors import ConfigurationError, Invalid
    from tether.server.services.agent_addresses import check_addresses

    try:
        addresses = check_addresses(agent_address or [])
    except Invalid as exc:
        raise ConfigurationError(str(exc)) from exc
    result = initialise(settings, ip or [], agent_addresses=addresses)
    typer.echo(f"Platform created in {settings.data_dir}")
    typer.echo(f"CA fingerprint (SHA-256): {result.ca_sha256}")
    mfa = {
        "username": result.admin_username,
        "secret": result.mfa_secret,
        "uri": result.mfa_uri,
        "recovery_codes": result.recovery_codes,
    }
    if admin_password_file is not None:
        mfa_file = mfa_file_for(admin_password_file)
        write_private(admin_password_file, (result.admin_password + "\n").encode())
        write_private(mfa_file, (json.dumps(mfa, indent=2) + "\n").encode())
        typer.echo(
            f"Admin user {result.admin_username!r}; password written to {admin_password_file}, "
            f"second factor (TOTP) to {mfa_file}"
        )
    else:
        typer.echo(f"Admin user {result.admin_username!r}, password: {result.admin_password}")
        typer.echo(f"Second factor (add to an authenticator app): {result.mfa_uri}")
        typer.echo(f"Recovery codes (each works once): {' '.join(result.recovery_codes)}")
        typer.echo("The password, secret and codes are shown once; store them now.")


@server_app.command("join")
def join(
    data: DataOpt,
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="A copy of an existing node's data directory (or of the files "
            "docs/operations.md names), brought over by the operator.",
        ),
    ],
    listen: Annotated[str | None, typer.Option(help="This node's analyst port HOST:PORT.")] = None,
    agent_listen: Annotated[
        str | None, typer.Option(help="This node's agent port HOST:PORT.")
    ] = None,
    node_name: Annotated[
        str | None,
        typer.Option(help="The name the hosts list shows for this node (default: HOST:PORT)."),
    ] = None,
    file_store_dir: Annotated[
        Path | None,
        typer.Option(help="The file store directory all nodes share (e.g. an NFS mount)."),
    ] = None,
) -> None:
    """Make DATA the data directory of one more node of a platform on PostgreSQL and Redis,
    from a copy of another node's data directory; nothing is fetched over the network."""
    from tether.server.services.joining import join as join_platform

    joined = join_platform(
        source,
        data,
        listen=listen,
        agent_listen=agent_listen,
        node_name=node_name,
        file_store_dir=str(file_store_dir.resolve()) if file_store_dir else None,
    )
    typer.echo(f"Node data directory {joined.settings.data_dir} made from {source}")
    typer.echo(f"Copied: {', '.join(joined.copied)}")
    typer.echo(f"Start it with: tether server run --data {joined.settings.data_dir}")


@server_app.command("renew-cert")
def renew_cert(data: DataOpt) -> None:
    """Issue a new server certificate from the platform CA (same names, audited); restart the
    platform to serve it."""
    from tether.server.config import load_settings
    from tether.server.services.server_certificate import renew

    renewal = renew(load_settings(data.resolve()))
    typer.echo(
        f"New server certificate {renewal.serial} (replaces {renewal.previous_serial}), valid "
        f"until {renewal.not_after:%Y-%m-%d %H:%M} UTC; restart the platform to serve it."
    )


@server_app.command("enrollment-code")
def enrollment_code(
    data: DataOpt,
    username: Annotated[str, typer.Argument(help="The account that needs a way back in.")],
    hours: Annotated[int, typer.Option(min=1, max=168, help="How long the code works.")] = 24,
) -> None:
    """Break glass, on the platform host: forget USERNAME's second factor, end their sessions
    and print an enrollment code for a new one (audited as the platform host's doing)."""
    from datetime import timedelta

    from tether.server.config import load_settings
    from tether.server.services.break_glass import issue_on_host

    settings = load_settings(data.resolve())
    issued = issue_on_host(settings, username, timedelta(hours=hours))
    typer.echo(f"Enrollment code for {issued.username}: {issued.code}")
    typer.echo(
        f"It works once, until {issued.expires_at:%Y-%m-%d %H:%M} UTC. Log in as "
        f"{issued.username} and run 'tether mfa enroll --enrollment-code CODE' (or enter it on "
        "the web enrollment page)."
    )


@server_app.command("run")
def run(
    data: DataOpt,
    listen: Annotated[str | None, typer.Option(help="Analyst port HOST:PORT.")] = None,
    agent_listen: Annotated[str | None, typer.Option(help="Agent port HOST:PORT.")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="What this process serves: all (both ports, the default), api (analyst port and "
            "web UI) or gateway (agent port); api and gateway need PostgreSQL and --redis-url."
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL of the bus between the platform's processes."),
    ] = None,
) -> None:
    """Serve the analyst port and the agent port (or one of them, by role) until interrupted."""
    from tether.logs import configure
    from tether.server import runner
    from tether.server.config import load_settings

    settings = load_settings(
        data.resolve(),
        listen=listen,
        agent_listen=agent_listen,
        role=role,
        redis_url=redis_url,
    )
    configure(settings.log_level)
    runner.run(settings)


PassphraseOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="A file holding the passphrase the keys are encrypted under (never given on the "
        "command line, never printed).",
    ),
]


def _passphrase(path: Path | None) -> bytes | None:
    from tether.server.errors import ConfigurationError
    from tether.server.services.backup_archive import check_passphrase

    if path is None:
        return None
    try:
        return check_passphrase(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the passphrase file {path}.") from exc


@server_app.command("backup")
def backup(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", help="The backup file to write (new).")],
    passphrase_file: PassphraseOpt = None,
    without_keys: Annotated[
        bool,
        typer.Option(
            "--without-keys",
            help="Leave the CA, server, audit and MFA keys out (escrow them yourself).",
        ),
    ] = False,
) -> None:
    """Back up the platform while it runs: the database (SQLite online backup, or pg_dump of
    one PostgreSQL snapshot), the file
    library, the signed checkpoint and the keys encrypted under a passphrase (or left out);
    audited."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from tether.server.config import load_settings
    from tether.server.errors import ConfigurationError
    from tether.server.services.backup import take_backup

    if (passphrase_file is None) == (not without_keys):
        raise ConfigurationError(
            "Say what happens to the keys: --passphrase-file FILE to encrypt them into the "
            "backup, or --without-keys to leave them out."
        )
    passphrase = _passphrase(passphrase_file)
    settings = load_settings(data.resolve())
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("Backing up", total=None)
        result = take_backup(
            settings,
            output.resolve(),
            passphrase,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(
        f"Backup written to {result.path}: {result.size} bytes, {result.parts} parts, audit head "
        f"{result.head_seq}, taken at {result.taken_at}, keys {result.keys}."
    )
    typer.echo(f"SHA-256 of the file: {result.sha256}")


@server_app.command("restore")
def restore(
    backup_file: Annotated[Path, typer.Argument(help="A file made by 'tether server backup'.")],
    data: Annotated[
        Path, typer.Option("--data", help="A new (or empty) directory to restore into.")
    ],
    passphrase_file: PassphraseOpt = None,
    keys_from: Annotated[
        Path | None,
        typer.Option(
            "--keys-from", help="A folder holding the key files (for a --without-keys backup)."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="TETHER_DATABASE_URL",
            help="A new, empty PostgreSQL database (for the backup of a PostgreSQL platform).",
        ),
    ] = None,
) -> None:
    """Check every part of a backup, then restore it into a new data directory (and, for a
    PostgreSQL platform, a new empty database) and put the restore on the audit record; the
    target is left as it was when any check fails."""
    from tether.server.services.restore import restore_backup

    result = restore_backup(
        backup_file.resolve(),
        data.resolve(),
        passphrase=_passphrase(passphrase_file),
        keys_from=keys_from.resolve() if keys_from else None,
        database_url=database_url or None,
    )
    typer.echo(
        f"Restored into {result.data} from the backup taken at {result.taken_at} (audit head "
        f"{result.head_seq}); the restore is record {result.record_seq}."
    )
    typer.echo(
        f"Start it with 'tether server run --data {result.data}'. Hosts enrolled after the "
        "backup must enroll again."
    )


@server_app.command("rotate-key")
def rotate_key(
    which: Annotated[str, typer.Argument(help="audit, mfa or ca")],
    data: DataOpt,
    finish: Annotated[
        bool,
        typer.Option("--finish", help="ca: end the rotation once every host has moved."),
    ] = False,
) -> None:
    """Replace the audit signing key (older checkpoints still verify), the MFA sealing key
    (every TOTP secret sealed anew) or the CA (agents move to the new one over their
    connections; --finish ends it), each audited; the platform must be stopped."""
    from tether.server.config import load_settings
    from tether.server.errors import ConfigurationError
    from tether.server.services.ca_rotation import finish_ca_rotation, rotate_ca
    from tether.server.services.key_rotation import rotate_audit_key, rotate_mfa_key

    settings = load_settings(data.resolve())
    if finish and which != "ca":
        raise ConfigurationError("--finish ends a CA rotation; give 'ca' with it.")
    if which == "audit":
        done = rotate_audit_key(settings)
        typer.echo(
            f"New audit key {done.new_fingerprint[:16]}... replaces {done.old_fingerprint[:16]}... "
            f"(record {done.record_seq}); checkpoints before it still verify with the old key."
        )
    elif which == "mfa":
        done = rotate_mfa_key(settings)
        typer.echo(
            f"New MFA sealing key; {done.count} TOTP secrets sealed anew (record "
            f"{done.record_seq})."
        )
    elif which == "ca" and finish:
        ended = finish_ca_rotation(settings)
        typer.echo(
            f"The CA rotation is finished (record {ended.record_seq}): only the CA "
            f"{ended.new_sha256[:16]}... is trusted now; start the platform again."
        )
    elif which == "ca":
        started = rotate_ca(settings)
        typer.echo(
            f"New CA {started.new_sha256[:16]}... (record {started.record_seq}), cross-signed "
            f"by the old one. Start the platform: connected agents move to it by themselves "
            f"({started.hosts_to_move} to move). Then run 'tether server rotate-key ca "
            "--finish' with the platform stopped. Enrollment tokens made before now name the "
            "old CA: make new ones."
        )
    else:
        raise ConfigurationError(f"{which!r} is not a key that rotates; give audit, mfa or ca.")
