#!/usr/bin/env bash
# Development only: the entrypoint of the `rabbitmq` service in
# deploy/compose.yaml. Never use this in production.
#
# definitions.json creates the users `notifier` and `portal` with no password
# (an empty hash, so they cannot log in). This script starts RabbitMQ the
# way the image normally does, waits until it is up, and then gives those
# users the development passwords from the environment. It also creates an
# `admin` user for the management UI. It runs again on every start, because
# every boot-time import of definitions.json clears the passwords again.
# When it is done it creates /tmp/dev-passwords-set; the compose healthcheck
# waits for that file.
set -euo pipefail

rm -f /tmp/dev-passwords-set

# The image's entrypoint drops from root to the rabbitmq user for rabbitmq*
# commands, so the server and the CLI calls below share one Erlang cookie.
docker-entrypoint.sh rabbitmq-server &
server=$!

stop() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server"
  exit $?
}
trap stop TERM INT

ctl() { docker-entrypoint.sh rabbitmqctl --quiet "$@"; }

give_up_if_server_died() {
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server"
    exit $?
  fi
}

# Let the server write the Erlang cookie before any CLI call could create a
# different one.
until [ -s /var/lib/rabbitmq/.erlang.cookie ]; do
  give_up_if_server_died
  sleep 1
done
until ctl await_startup --timeout 10 >/dev/null 2>&1; do
  give_up_if_server_died
  sleep 2
done

ctl change_password notifier "${DEV_NOTIFIER_PASSWORD:?}"
ctl change_password portal "${DEV_PORTAL_PASSWORD:?}"
if ! ctl add_user admin "${DEV_ADMIN_PASSWORD:?}" >/dev/null 2>&1; then
  ctl change_password admin "$DEV_ADMIN_PASSWORD"
fi
ctl set_user_tags admin administrator
ctl set_permissions -p / admin '.*' '.*' '.*'

touch /tmp/dev-passwords-set
echo "compose-start: development passwords set for notifier, portal and admin" >&2

wait "$server"
