"""Whole numbers typed into a form or carried in a link (a version, a process id).

`str.isdigit()` also accepts digits `int()` cannot read ("²"), and a number of twenty digits
overflows the database's integers: the pages accept plain ASCII digits, at most nine of them,
and treat anything else as bad input or as naming nothing.
"""

import re

_WHOLE = re.compile(r"[0-9]{1,9}")


def whole_number(text: str) -> int | None:
    """`text` as a number when it is 1 to 9 ASCII digits, else None."""
    return int(text) if _WHOLE.fullmatch(text) else None
