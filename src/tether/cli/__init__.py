"""The analyst's `tether` command: talks to the REST API, imports the protocol only."""
