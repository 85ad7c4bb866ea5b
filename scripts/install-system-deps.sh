#!/usr/bin/env bash
# Installs the real components the test suite starts, on a fresh Debian 12 machine.
# Idempotent: packages already present are left alone. Python-shipped binaries (the
# tansu Kafka-protocol broker, Traefik) come from the project's test extras instead.
set -euo pipefail

packages=(
    postgresql            # primary + streaming replica (initdb, pg_ctl, pg_basebackup)
    pgbackrest            # backup collector tests
    redis-server          # redis collector, queue lists
    prometheus-alertmanager  # alertmanager + amtool
    prometheus            # promtool, prometheus
    docker-compose        # `docker-compose config` checks compose.yaml
    openssl               # self-signed certificate for the traefik fixture
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "installing: ${missing[*]}"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
