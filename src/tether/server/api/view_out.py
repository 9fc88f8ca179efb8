"""The base of API answers read from a service's view (a frozen dataclass of the service).

An answer declares the fields it shows; they are read from the view by name, once, here. A view
field the answer does not declare (a user id kept inside, say) is left out, and a view nested in
another (a job's approval) is read the same way by its own answer model.
"""

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class ViewOut(BaseModel):
    """An API answer filled from a service view's attributes of the same names."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, view: object, **extra: Any) -> Self:
        """The answer for `view`, with `extra` fields the view does not hold (a token shown
        once, whether a version is new)."""
        if not extra:
            return cls.model_validate(view)
        fields = {name: getattr(view, name) for name in cls.model_fields if hasattr(view, name)}
        return cls.model_validate({**fields, **extra})
