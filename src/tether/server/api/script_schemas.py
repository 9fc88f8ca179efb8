"""Request and response bodies of the script library API."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tether.server.api.view_out import ViewOut


class ScriptSave(BaseModel):
    """A new version of a script. Without `parameters` the latest version's schema is kept."""

    model_config = ConfigDict(extra="forbid")

    # Characters here; the service also holds the UTF-8 size to 1 MiB.
    source: Annotated[str, Field(max_length=1024 * 1024)]
    description: Annotated[str, Field(max_length=2000)] = ""
    parameters: dict[str, Any] | None = None


class ScriptSummaryOut(ViewOut):
    name: str
    version: int
    description: str
    parameters: dict[str, Any]
    sha256: str
    created_by: str
    created_at: datetime


class ScriptOut(ScriptSummaryOut):
    source: str


class ScriptSavedOut(ScriptOut):
    # False when the latest version already held this source, description and schema.
    new_version: bool


class ScriptVersionOut(BaseModel):
    version: int
    description: str
    sha256: str
    created_by: str
    created_at: datetime
