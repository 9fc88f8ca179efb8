"""The hostname an endpoint reports at enrollment and in every hello.

It is the endpoint's word, never its identity (the certificate is), but analysts pick hosts by
it (`tether run NAME`) and read it in tables, exports and the Session History: so it carries no
control or bidirectional character, and names that look alike are found by one comparison key.
"""

import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from tether.protocol.text import ENDPOINT_TEXT

MAX_HOSTNAME = 255
# What a refusal says; short, so "Malformed agent message (hello.hostname: ...)." fits a close
# frame whole.
HOSTNAME_RULE = "1 to 255 characters, no control or bidi characters"

_SHOWABLE = re.compile(ENDPOINT_TEXT)


def _checked(value: str) -> str:
    # Length first: the pattern never runs over a megabyte.
    if not 1 <= len(value) <= MAX_HOSTNAME or _SHOWABLE.match(value) is None:
        raise PydanticCustomError("hostname", HOSTNAME_RULE)
    return value


Hostname = Annotated[str, AfterValidator(_checked)]


def hostname_key(name: str) -> str:
    """What two names that read alike share: compatibility-normalized, case-folded, without
    format characters (zero-width joiners and the like), and without a trailing dot."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf").rstrip(".")


def shared_hostnames(hosts: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Of (hostname, host id) pairs, the hostnames more than one host carries (names that read
    alike count as one, by `hostname_key`): where a list shows the id beside the name, since the
    name alone cannot tell a re-imaged machine from its old record, nor a clone from its source.
    The same host listed twice (two of its jobs) does not make its name shared."""
    ids: dict[str, set[str]] = {}
    spellings: dict[str, set[str]] = {}
    for hostname, host_id in hosts:
        key = hostname_key(hostname)
        ids.setdefault(key, set()).add(host_id)
        spellings.setdefault(key, set()).add(hostname)
    return frozenset(
        name for key, names in spellings.items() if len(ids[key]) > 1 for name in names
    )
