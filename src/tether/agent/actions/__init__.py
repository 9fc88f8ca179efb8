"""Action handlers, by the name declared in `tether.protocol.ACTIONS`."""

from tether.agent.action import Handler
from tether.agent.actions import system

HANDLERS: dict[str, Handler] = {
    "system.noop": system.noop,
}
