#!/bin/sh
# The broker's entrypoint in docker-compose: the project's base configuration plus the production overlay
# (no anonymous access, dynamic security, TLS listener), and a dynamic-security file created on first
# start with the `admin` client whose password comes from MQTT_ADMIN_PASSWORD.
#
# Every path and port can be changed through the environment, so tests run this same script on a
# machine's own mosquitto (tests/identity/test_broker_entrypoint.py).
set -eu
CONF_DIR=${MOSQUITTO_CONF_DIR:-/mosquitto/config}
DATA_DIR=${MOSQUITTO_DATA_DIR:-/mosquitto/data}
CERT_DIR=${MOSQUITTO_CERT_DIR:-/mosquitto/certs}
PLUGIN=${MOSQUITTO_DYNSEC_PLUGIN:-/usr/lib/mosquitto_dynamic_security.so}
MQTT_PORT=${MQTT_PORT:-1883}
MQTTS_PORT=${MQTTS_PORT:-8883}
RUN_CONF=${MOSQUITTO_RUN_CONF:-/tmp/mosquitto.conf}
: "${MQTT_ADMIN_PASSWORD:?set MQTT_ADMIN_PASSWORD: the dynamic-security admin's password}"

DYNSEC="$DATA_DIR/dynamic-security.json"
if [ ! -f "$DYNSEC" ]; then
    mosquitto_ctrl dynsec init "$DYNSEC" admin "$MQTT_ADMIN_PASSWORD" >/dev/null
    echo "entrypoint: created $DYNSEC with the admin client" >&2
fi

{
    sed -e "s|^listener 1883.*|listener $MQTT_PORT|" \
        -e "s|^persistence_location .*|persistence_location $DATA_DIR/|" "$CONF_DIR/mosquitto.conf"
    echo
    sed -e "s|^listener 8883.*|listener $MQTTS_PORT|" \
        -e "s|/usr/lib/mosquitto_dynamic_security.so|$PLUGIN|" \
        -e "s|/mosquitto/data/dynamic-security.json|$DYNSEC|" \
        -e "s|/mosquitto/certs|$CERT_DIR|" "$CONF_DIR/secure.conf"
    if [ -n "${MOSQUITTO_EXTRA_CONF:-}" ]; then printf '%s\n' "$MOSQUITTO_EXTRA_CONF"; fi
} > "$RUN_CONF"
exec mosquitto -c "$RUN_CONF"
