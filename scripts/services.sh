#!/usr/bin/env bash
# Makes sure the services the tests need are here and running: PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth on loopback) with its server
# binaries (tests start private instances too), and nats-server on
# 127.0.0.1:4222 (tests start private ones too). Installs Debian packages
# when they are missing; exits non-zero if a service cannot be brought up.
set -euo pipefail

need_apt=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
# The benchmarks' MQTT comparator (sotto-bench starts its own instances).
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" && return 0
    sleep 0.2
  done
  return 1
}

# PostgreSQL
if ! port_open 5432; then
  echo "starting PostgreSQL"
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  if ! ls /etc/postgresql/"$version"/main >/dev/null 2>&1; then
    pg_createcluster "$version" main >/dev/null
  fi
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q "sotto-ci" "$hba"; then
    # Tests connect as postgres over loopback without a password.
    sed -i '1i host all all 127.0.0.1/32 trust # sotto-ci' "$hba"
  fi
  pg_ctlcluster "$version" main start || service postgresql start
  wait_port 5432 || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
for _ in $(seq 1 50); do
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done
psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null || {
  echo "PostgreSQL at 127.0.0.1:5432 does not accept user postgres without a password" >&2
  exit 1
}

# NATS
if ! port_open 4222; then
  echo "starting nats-server"
  mkdir -p /tmp/sotto-ci-nats
  setsid nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/sotto-ci-nats \
    >/tmp/sotto-ci-nats/log 2>&1 < /dev/null &
  wait_port 4222 || { echo "nats-server did not start" >&2; exit 1; }
fi
echo "services: PostgreSQL and NATS are up"
