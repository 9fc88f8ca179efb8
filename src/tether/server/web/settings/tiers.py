"""The Active Response tiers as the Settings pages explain them, read from the declarations
every layer uses (`tether.protocol.actions`: each action's tier and label), so the page cannot
drift from what `Jobs.submit` enforces."""

from dataclasses import dataclass

from tether.protocol import TIERS, Tier
from tether.protocol.actions import tier_additions
from tether.server.services.scripts import LIBRARY_CHANGE


@dataclass(frozen=True)
class TierLine:
    """One tier: its name, the tier below it (whose everything it also holds) and what it adds."""

    tier: str
    below: str | None
    adds: list[str]


def tier_lines() -> list[TierLine]:
    """The tiers lowest first, each with what it adds, in the words refusals use."""
    added = tier_additions()
    # Writing the library is the script tier's: respond-tier runs trust the library's text.
    added[Tier.SCRIPT].append(LIBRARY_CHANGE)
    return [
        TierLine(tier.value, TIERS[n - 1].value if n else None, added[tier])
        for n, tier in enumerate(TIERS)
    ]
