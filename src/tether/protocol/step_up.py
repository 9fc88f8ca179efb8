"""Step-up: the headers a sensitive change carries its fresh second-factor code in, and the one
the platform answers with when it wants one (docs/adr/0034). Read by the platform and the CLI."""

# How long a second-factor check counts as fresh for a sensitive change.
STEP_UP_WINDOW_SECONDS = 300
# The request header carrying a fresh TOTP code for a sensitive change.
CODE_HEADER = "X-Tether-Code"
# The answer header ("required") that says the change needs a fresh code.
STEP_UP_HEADER = "X-Tether-Step-Up"
