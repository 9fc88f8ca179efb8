"""The agent port: mutual-TLS WebSocket connections, one per enrolled endpoint."""
