"""Implementations of the wake-up bus (services/bus.py): one process, or Redis between several."""
