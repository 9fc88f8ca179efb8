"""The agent as endpoints install it: the frozen bundle and the deb/rpm/tar packages around it.

Runs on the platform host. It freezes `tether.agent` (never the platform) and imports the platform
only to issue the package's enrollment token (docs/adr/0042).
"""
