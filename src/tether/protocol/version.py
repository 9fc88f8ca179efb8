"""Protocol version and the hard limits both sides enforce."""

# Bumped whenever a message changes so that an agent of the version before would refuse it or
# act on it differently (docs/protocol.md, "Versions"). The platform speaks this version and the
# one before it (`OLDEST_PROTOCOL_VERSION`), so agents can be upgraded after the platform, and
# refuses any other version with a reason the agent prints before it stops.
PROTOCOL_VERSION = 2
OLDEST_PROTOCOL_VERSION = 1

# Control frames are small JSON documents; file data arrives in later issues as binary chunks of at
# most this size too. Anything larger is refused by the WebSocket layer before it is buffered.
MAX_FRAME_BYTES = 1024 * 1024

# A result an agent sends stays this far under the frame limit: listings stop adding entries at
# this many bytes of JSON and say they were truncated, leaving room for the status around them.
MAX_RESULT_BYTES = 768 * 1024
