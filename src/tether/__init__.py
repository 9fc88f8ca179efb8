"""Tether: audited live response on endpoints over one mutual-TLS WebSocket per agent."""

__version__ = "0.1.0"
