"""The CLI against an in-process platform: the analyst API's fixtures, reused."""

from ..server.api.conftest import (  # noqa: F401  (fixtures)
    admin,
    admin_password,
    admin_secret,
    client,
    platform,
    platform_template,
)
from ..server.conftest import fast_password_hashing  # noqa: F401  (fixture)
