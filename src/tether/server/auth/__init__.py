"""Credentials: password hashing and session tokens. No I/O; the services store the results."""
