"""`tether login`, `tether logout`, `tether whoami`."""

import hashlib
import ssl
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tether.cli import profile
from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json


def _fetch_pinned_ca(server: str, fingerprint: str) -> str:
    try:
        response = httpx.get(f"{server}/api/v1/enroll/ca", verify=False, timeout=10.0)  # noqa: S501
        der = x509.load_pem_x509_certificate(response.content).public_bytes(
            serialization.Encoding.DER
        )
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"Cannot fetch the platform CA from {server}: {exc}.") from exc
    if hashlib.sha256(der).hexdigest() != fingerprint.lower().replace(":", ""):
        raise CliError("The platform's CA does not match the fingerprint you gave; not logging in.")
    return response.text


def _read_ca(path: Path) -> str:
    try:
        pem = path.read_text()
        ssl.create_default_context(cadata=pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CliError(f"{path} is not a readable PEM CA certificate.") from exc
    return pem


def login(
    server: Annotated[
        str | None, typer.Option(help="Platform URL, e.g. https://tether:8443.")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="The platform CA certificate (PEM).")] = None,
    ca_fingerprint: Annotated[
        str | None, typer.Option(help="SHA-256 of the platform CA, instead of --ca.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", "-u")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    code: Annotated[
        str | None, typer.Option(help="The authenticator code, instead of a prompt.")
    ] = None,
    recovery_code: Annotated[
        str | None, typer.Option(help="A one-time recovery code instead of the TOTP code.")
    ] = None,
) -> None:
    """Log in (password, then the second factor when the account has one) and keep the
    session in the config folder."""
    try:
        known: profile.Profile | None = profile.load()
    except CliError:
        known = None
    url = (server or (known.server if known else "")).rstrip("/")
    if not url:
        raise CliError("Give the platform address with --server https://HOST:PORT.")
    if not url.startswith("https://"):
        raise CliError("The platform address must start with https://.")
    if ca is not None:
        ca_pem = _read_ca(ca)
    elif ca_fingerprint:
        ca_pem = _fetch_pinned_ca(url, ca_fingerprint)
    elif known is not None and known.server == url:
        ca_pem = known.ca_pem
    else:
        raise CliError("Give the platform CA with --ca FILE or --ca-fingerprint SHA256.")
    name = username or (known.username if known else None) or typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True)
    api = Api(url, ca_pem, login_hint=False)
    try:
        answer = api.post(
            "/auth/login", json={"username": name, "password": password, "client": "cli"}
        )
        if answer["stage"] == "second_factor":
            answer = api.post("/auth/login/mfa", json=_second_factor(answer, code, recovery_code))
    finally:
        api.close()
    profile.save(profile.Profile(server=url, ca_pem=ca_pem, token=answer["token"], username=name))
    console.print(f"Logged in to {url} as {answer['username']}.", markup=False)
    if answer["stage"] == "enroll":
        console.print(
            "Your role requires a second factor: ask an admin for an enrollment code "
            f"('tether user enrollment-code {answer['username']}'), then run "
            "'tether mfa enroll --enrollment-code CODE' and 'tether mfa confirm --code CODE'; "
            "until then nothing else is allowed.",
            markup=False,
        )


def _second_factor(
    answer: dict[str, str], code: str | None, recovery_code: str | None
) -> dict[str, str]:
    body = {"token": answer["token"], "client": "cli"}
    if recovery_code:
        body["recovery_code"] = recovery_code.strip()
        return body
    typed = code or typer.prompt("Authentication code")
    typed = typed.strip().replace(" ", "")
    if not (len(typed) == 6 and typed.isdigit()):
        raise CliError("An authentication code is the 6 digits your authenticator app shows.")
    body["code"] = typed
    return body


def logout() -> None:
    """End the session on the platform and forget it here."""
    current = profile.load()
    if current.token:
        try:
            Api(current.server, current.ca_pem, current.token).post("/auth/logout")
        finally:
            profile.save(profile.Profile(current.server, current.ca_pem, None, current.username))
    console.print("Logged out.")


def whoami(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show who this config folder is logged in as."""
    me = Api.from_profile().get("/auth/whoami")
    if json_output:
        emit_json(me)
    else:
        mfa = "second factor passed" if me.get("mfa_verified") else "no second factor"
        if me.get("enrollment_only"):
            mfa = "must enroll a second factor ('tether mfa enroll --enrollment-code CODE')"
        who = me["username"] + (f" of {me['organisation']}" if me.get("external") else "")
        tier = me.get("tier")
        reach = f"Active Response tier: {tier}" if tier else "no Active Response tier"
        roles = ", ".join(me["roles"]) or "none"
        console.print(f"{who} (roles: {roles}; {reach}; {mfa})", markup=False)
