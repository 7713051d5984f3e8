#!/usr/bin/env bash
# Start the services the test suite talks to, where they are not already running, and install
# what the tests need from Debian (openssh-server for the sshd fixture, chromium for HTML).
# Idempotent.
set -u
log() { printf 'services: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_updated=0
need_pkg() {  # need_pkg BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq >/dev/null; apt_updated=1; fi
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
}

need_pkg sshd openssh-server
need_pkg sqlite3 sqlite3
need_pkg sudo sudo
need_pkg chromium chromium  # the drill report's HTML, rendered headless

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  pg_version="$(ls /etc/postgresql | head -1)"
  pg_options=()
  # perf.report's tests read pg_stat_statements where the server preloads it.
  if [ -f "/usr/lib/postgresql/$pg_version/lib/pg_stat_statements.so" ]; then
    pg_options=(-- -o "-c shared_preload_libraries=pg_stat_statements")
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start "${pg_options[@]}"
fi
if ! mariadb-admin -uroot -h127.0.0.1 --protocol=tcp ping >/dev/null 2>&1; then
  log "starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

for i in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null \
    && mariadb-admin -uroot -h127.0.0.1 --protocol=tcp ping >/dev/null 2>&1 \
    && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && { log "all up"; exit 0; }
  sleep 1
done
log "a service did not come up: check pg_isready, mariadb-admin ping, redis-cli ping"
exit 1
