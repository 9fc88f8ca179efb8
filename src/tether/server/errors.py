"""Errors of the platform layers; the API turns each into one HTTP status and one sentence."""

from tether.errors import TetherError


class PlatformError(TetherError):
    """Base for everything the platform refuses on purpose."""

    status_code = 400


class NotFound(PlatformError):
    status_code = 404


class Conflict(PlatformError):
    status_code = 409


class Unauthenticated(PlatformError):
    status_code = 401


class Forbidden(PlatformError):
    status_code = 403


class Gone(PlatformError):
    """Something that was there has expired or been used up, for good."""

    status_code = 410


class Invalid(PlatformError):
    status_code = 422


class ConfigurationError(PlatformError):
    """The data directory or settings cannot be used as they are."""


class Throttled(PlatformError):
    """Too many attempts: the caller must wait `retry_after` seconds (sent as Retry-After)."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(PlatformError):
    """The platform cannot carry the request out now (storage full, the audit log unwritable);
    nothing was changed."""

    status_code = 503


class SecondFactorRequired(Forbidden):
    """The session has not passed a second factor its account needs: it may only enroll one
    (`enrolled` False) or must log in again with it (`enrolled` True)."""

    def __init__(self, message: str, *, enrolled: bool) -> None:
        super().__init__(message)
        self.enrolled = enrolled


class StepUpRequired(Forbidden):
    """A sensitive change from a session whose last second-factor check is too old: it needs a
    fresh code (the API answers with the `X-Tether-Step-Up: required` header as well)."""
