#!/bin/sh
# The local broker image's entrypoint: runs the project's deploy/mosquitto/entrypoint.sh with the TLS files
# copied where the `mosquitto` user can read them, run as that user. mosquitto drops root for that user before it loads its
# certificates, and `microfleet pki init` writes server.key with mode 0600 for the user who ran it, so the
# bind-mounted /mosquitto/certs is unreadable to the broker ("Unable to load server key file").
set -eu
src=${MOSQUITTO_CERT_SRC:-/mosquitto/certs}
dst=/run/mosquitto-certs
mkdir -p "$dst"
cp "$src"/ca.crt "$src"/server.crt "$src"/server.key "$dst"/
chown -R mosquitto:mosquitto "$dst"
chmod 0600 "$dst"/server.key
export MOSQUITTO_CERT_DIR="$dst"
# as the mosquitto user from the start, so the dynamic-security file that entrypoint.sh creates (as root it
# would be root's, mode 0600: "Error saving Dynamic security plugin config: File is not writable") is its own
chown -R mosquitto:mosquitto /mosquitto/data
exec setpriv --reuid=mosquitto --regid=mosquitto --init-groups /bin/sh /mosquitto/config/entrypoint.sh "$@"
