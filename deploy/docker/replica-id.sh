#!/bin/sh
# Gives each replica of a scaled compose service a STABLE identity, then runs the command.
#
# `docker-compose up --scale ingest=3` starts microfleet_ingest_1..3 from one definition, so they share
# one environment. An MQTT consumer must keep the same client id across restarts and re-creations, or
# the QoS 1 messages queued for its persistent session strand until the session expires (mosquitto
# #2662). The container's hostname changes when it is re-created; its compose name does not. Docker's
# embedded DNS answers a reverse lookup of the container's address with that name
# (<project>_<service>_<n> with docker-compose 1, <project>-<service>-<n> with compose 2), so <n> is stable.
#
# REPLICA_ID_VAR names the variable to set (e.g. MICROFLEET_CONSUMER_ID) and REPLICA_ID_PREFIX its
# prefix: the result is <prefix>-<n>. A variable that is already set is left alone.
set -eu
if [ -n "${REPLICA_ID_VAR:-}" ] && [ -z "$(printenv "$REPLICA_ID_VAR" || true)" ]; then
    n=$(python - <<'PY'
import re
import socket

host = socket.gethostname()
try:
    name, aliases, _ = socket.gethostbyaddr(socket.gethostbyname(host))
except OSError:
    name, aliases = host, []
# Docker's DNS answers with the compose name; Podman writes "<ip> <hostname> <compose name>" in /etc/hosts
matches = (re.search(r"[-_](\d+)(?:\.|$)", n) for n in (name, *aliases))
match = next((m for m in matches if m), None)
print(match.group(1) if match else host)
PY
)
    export "$REPLICA_ID_VAR=${REPLICA_ID_PREFIX:-replica}-$n"
    echo "replica-id: $REPLICA_ID_VAR=${REPLICA_ID_PREFIX:-replica}-$n" >&2
fi
exec "$@"
