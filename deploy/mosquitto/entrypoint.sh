#!/bin/sh
# The broker's entrypoint in docker-compose: the project's base configuration plus the production overlay
# (no anonymous access, dynamic security, TLS listener), and a dynamic-security file created on first
# start with the `admin` client whose password comes from MQTT_ADMIN_PASSWORD.
#
# Every path and port can be changed through the environment, so tests run this same script on a
# machine's own mosquitto (tests/identity/test_broker_entrypoint.py).
#
# Started as root (eclipse-mosquitto, the local image), mosquitto drops to the user of its `user`
# option (mosquitto's default: mosquitto; MOSQUITTO_USER sets another) before it loads its TLS key, and
# saves the dynamic-security file as that user. So, as root, this script first makes what the broker
# reads and writes that user's: the TLS files are copied from the (read-only) certificate mount next to
# the generated configuration, the key 0600 for that user (`microfleet pki init` writes server.key 0600
# for whoever ran it), and the data folder, the dynamic-security file included, is chowned to it.
set -eu
CONF_DIR=${MOSQUITTO_CONF_DIR:-/mosquitto/config}
DATA_DIR=${MOSQUITTO_DATA_DIR:-/mosquitto/data}
CERT_DIR=${MOSQUITTO_CERT_DIR:-/mosquitto/certs}
PLUGIN=${MOSQUITTO_DYNSEC_PLUGIN:-/usr/lib/mosquitto_dynamic_security.so}
MQTT_PORT=${MQTT_PORT:-1883}
MQTTS_PORT=${MQTTS_PORT:-8883}
RUN_CONF=${MOSQUITTO_RUN_CONF:-/tmp/mosquitto.conf}
BROKER_USER=${MOSQUITTO_USER:-mosquitto}
: "${MQTT_ADMIN_PASSWORD:?set MQTT_ADMIN_PASSWORD: the dynamic-security admin's password}"

DYNSEC="$DATA_DIR/dynamic-security.json"
if [ ! -f "$DYNSEC" ]; then
    mosquitto_ctrl dynsec init "$DYNSEC" admin "$MQTT_ADMIN_PASSWORD" >/dev/null
    echo "entrypoint: created $DYNSEC with the admin client" >&2
fi

if [ "$(id -u)" = 0 ] && id -u "$BROKER_USER" >/dev/null 2>&1; then
    group=$(id -g "$BROKER_USER")
    chown -R "$BROKER_USER:$group" "$DATA_DIR"
    if [ -f "$CERT_DIR/server.key" ]; then
        tls_dir="$(dirname "$RUN_CONF")/mosquitto-certs"
        mkdir -p "$tls_dir"
        for f in ca.crt server.crt server.key; do
            if [ -f "$CERT_DIR/$f" ]; then cp "$CERT_DIR/$f" "$tls_dir/$f"; fi
        done
        chown -R "$BROKER_USER:$group" "$tls_dir"
        chmod 0700 "$tls_dir"
        chmod 0600 "$tls_dir/server.key"
        CERT_DIR=$tls_dir
    fi
fi

{
    sed -e "s|^listener 1883.*|listener $MQTT_PORT|" \
        -e "s|^persistence_location .*|persistence_location $DATA_DIR/|" "$CONF_DIR/mosquitto.conf"
    echo
    sed -e "s|^listener 8883.*|listener $MQTTS_PORT|" \
        -e "s|/usr/lib/mosquitto_dynamic_security.so|$PLUGIN|" \
        -e "s|/mosquitto/data/dynamic-security.json|$DYNSEC|" \
        -e "s|/mosquitto/certs|$CERT_DIR|" "$CONF_DIR/secure.conf"
    if [ -n "${MOSQUITTO_USER:-}" ]; then echo "user $MOSQUITTO_USER"; fi
    if [ -n "${MOSQUITTO_EXTRA_CONF:-}" ]; then printf '%s\n' "$MOSQUITTO_EXTRA_CONF"; fi
} > "$RUN_CONF"
exec mosquitto -c "$RUN_CONF"
