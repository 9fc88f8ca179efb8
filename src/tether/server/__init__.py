"""The Tether platform: analyst API, agent gateway, services and store."""
