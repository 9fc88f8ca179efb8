"""Platform logic. Routers and the gateway call these; these call the store, never upward."""
