"""The Scripts pages: the library, one script's source in an editor, its versions, save, delete.

Reading needs results.read, as the API's GET /scripts does. Saving and deleting call the same
`ScriptLibrary` methods as PUT and DELETE /api/v1/scripts/{name}, after the same check
(`editor_refusal`: the Active Response role and a passed second factor), so validation and the
audit record happen there. Paths with a fixed word sit under `/scripts/-/`: a script name can be
any word ("new", "run") but never holds a slash, so no name can shadow them.
"""

import contextlib
import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, source_of
from tether.server.errors import Forbidden, Invalid, NotFound, PlatformError
from tether.server.services.scripts import EMPTY_SCHEMA, ScriptVersion, editor_refusal
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.numbers import whole_number
from tether.server.web.templating import render

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.RESULTS_READ))]
Editor = Annotated[User, Depends(page_require(Permission.ACTIVE_RESPONSE))]
BAD_SCHEMA = "The parameters schema is not valid JSON."


def script_url(name: str) -> str:
    return "/scripts/" + quote(name, safe="")


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _schema_text(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, indent=2, ensure_ascii=False)


@router.get("/scripts")
async def library(request: Request, platform: PlatformDep, _user: Reader) -> Response:
    return render(request, "scripts.html", scripts=await platform.scripts.list())


async def _editor_page(
    request: Request,
    platform: PlatformDep,
    script: ScriptVersion | None,
    *,
    status: int = 200,
    error: str | None = None,
    typed: dict[str, str] | None = None,
    saved: str = "",
) -> Response:
    """The editor of `script` (None: a new one), with what the user typed after a refusal."""
    user: User = request.state.user
    history = await platform.scripts.history(script.name) if script else []
    latest = history[-1].version if history else None
    fields = {
        "name": script.name if script else "",
        "description": script.description if script else "",
        "source": script.source if script else "",
        "parameters": _schema_text(script.parameters if script else EMPTY_SCHEMA),
    } | (typed or {})
    return render(
        request,
        "script.html",
        status,
        script=script,
        latest=latest,
        history=list(reversed(history)),
        f=fields,
        error=error,
        saved=saved,
        script_url=script_url,
        # Why this user may not change the library (the service's sentence), or None.
        read_only=editor_refusal(user),
    )


@router.get("/scripts/-/new")
async def new_script(request: Request, platform: PlatformDep, _user: Reader) -> Response:
    return await _editor_page(request, platform, None)


@router.get("/scripts/{name}")
async def script_page(
    name: str, request: Request, platform: PlatformDep, _user: Reader
) -> Response:
    """The latest version in the editor, or an older one (`?version=N`) to read or restore."""
    version_text = request.query_params.get("version", "")
    version = whole_number(version_text) if version_text else None
    if version_text and version is None:
        return render(request, "message.html", 404, heading="Not found", message="No such version.")
    try:
        script = await platform.scripts.get(name, version)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Script not found", message=str(e))
    saved = request.query_params.get("saved", "")[:20]
    return await _editor_page(request, platform, script, saved=saved)


@router.post("/scripts/-/save")
async def save(request: Request, platform: PlatformDep, user: Editor) -> Response:
    """A new version through the library service: checked and audited there, as the API's PUT."""
    typed = await _form(request)
    name = typed.get("name", "")
    try:
        if (refusal := editor_refusal(user)) is not None:
            raise Forbidden(refusal)
        try:
            parameters = json.loads(typed.get("parameters", "") or "null")
        except ValueError as e:
            raise Invalid(BAD_SCHEMA) from e
        _, created = await platform.scripts.save(
            name,
            # Browsers send a textarea's line breaks as CRLF; the library keeps what was meant.
            typed.get("source", "").replace("\r\n", "\n"),
            typed.get("description", "").replace("\r\n", "\n"),
            parameters,
            actor=user.actor,
            source_addr=source_of(request),
        )
    except PlatformError as e:
        # Refused: the editor again, with what was typed, over the script as it stands.
        script = None
        with contextlib.suppress(NotFound):
            script = await platform.scripts.get(name) if name else None
        return await _editor_page(
            request, platform, script, status=e.status_code, error=str(e), typed=typed
        )
    # Post/redirect/get, so a reload does not save again.
    outcome = "new" if created else "unchanged"
    return RedirectResponse(f"{script_url(name)}?saved={outcome}", status_code=303)


@router.post("/scripts/-/delete")
async def delete(request: Request, platform: PlatformDep, user: Editor) -> Response:
    """Hide the script from the library (its versions stay on record), as the API's DELETE."""
    name = (await _form(request)).get("name", "")
    try:
        if (refusal := editor_refusal(user)) is not None:
            raise Forbidden(refusal)
        await platform.scripts.delete(name, actor=user.actor, source_addr=source_of(request))
    except PlatformError as e:
        return render(request, "message.html", e.status_code, heading="Not deleted", message=str(e))
    return RedirectResponse("/scripts", status_code=303)
