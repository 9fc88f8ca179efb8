"""What an agent package installs, and the scripts that enroll, start, stop and remove it.

One layout for deb, rpm and tar, so the three behave alike:

    /opt/tether-agent/tether-agent           the bundle's executable (and _internal/ beside it)
    /opt/tether-agent/enrollment.token       the package's token (0600); deleted once enrolled
    <unit dir>/tether-agent.service          the systemd unit
    /var/lib/tether-agent/                   the agent's identity and journal, made by enrolling

Install enrolls (unless this endpoint already is) and starts the unit where systemd runs.
Remove stops the agent, releases an active isolation (so no firewall rule outlives the agent),
and deletes the state directory unless the operator sets TETHER_AGENT_KEEP_STATE=1.
"""

PACKAGE = "tether-agent"
PREFIX = "/opt/tether-agent"
EXECUTABLE = f"{PREFIX}/tether-agent"
TOKEN = f"{PREFIX}/enrollment.token"
STATE = "/var/lib/tether-agent"
UNIT_NAME = "tether-agent.service"

UNIT = f"""# Installed by the tether-agent package, built by the platform (docs/adr/0042).
[Unit]
Description=Tether endpoint agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={EXECUTABLE} run --state-dir {STATE}
# The agent reconnects by itself with jittered backoff; systemd only restarts a crashed process.
Restart=on-failure
RestartSec=5
# 78: the platform refused this agent for good, or the agent refused its state directory.
RestartPreventExitStatus=78
User=root
StateDirectory=tether-agent
StateDirectoryMode=0700
UMask=0077

[Install]
WantedBy=multi-user.target
"""

# POSIX sh: the endpoint has no Python, and perhaps no bash.
INSTALL = f"""#!/bin/sh
# Enroll this endpoint with the package's token, then start the agent.
set -e
umask 077
if [ ! -f {STATE}/identity.json ]; then
  if [ ! -f {TOKEN} ]; then
    echo "tether-agent: this endpoint is not enrolled and the package's token is gone; enroll it with '{EXECUTABLE} enroll --token TOKEN --state-dir {STATE}'." >&2
    exit 1
  fi
  {EXECUTABLE} enroll --token-file {TOKEN} --state-dir {STATE}
fi
# The token may have uses left for other endpoints: keep no copy here.
rm -f {TOKEN}
# The package's version runs from now on, not a bundle an earlier self-upgrade left current.
rm -f {STATE}/upgrades/current
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable {UNIT_NAME}
  # restart, not start: after an upgrade the running agent is the old version.
  systemctl restart {UNIT_NAME}
else
  echo "tether-agent: systemd is not running; start the agent with '{EXECUTABLE} run --state-dir {STATE}'."
fi
"""

# Before the files go: stop the agent, then release isolation while the executable still exists.
REMOVE = f"""#!/bin/sh
# Stop the agent and release its isolation before its files are removed.
if [ -d /run/systemd/system ]; then
  systemctl disable --now {UNIT_NAME} >/dev/null 2>&1 || true
fi
if [ -f {STATE}/identity.json ] && [ -x {EXECUTABLE} ]; then
  {EXECUTABLE} isolation release --state-dir {STATE} || echo "tether-agent: could not release the isolation; check 'nft list ruleset'." >&2
fi
exit 0
"""

# After the files went: the state directory (identity, journal), unless asked to keep it.
PURGE = f"""#!/bin/sh
if [ "${{TETHER_AGENT_KEEP_STATE:-}}" = 1 ]; then
  echo "tether-agent: kept {STATE} (TETHER_AGENT_KEEP_STATE=1)."
else
  rm -rf {STATE}
fi
rmdir {PREFIX} 2>/dev/null || true
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
"""
