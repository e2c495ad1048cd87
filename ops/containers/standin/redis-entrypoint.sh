#!/bin/sh
# As the official redis image: arguments starting with "-" go to redis-server; the server runs as
# the redis user, with protected mode off (the official image builds it off: the container's
# network is the boundary), so other containers can reach it without a password.
set -eu
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
    chown -R redis:redis /data
    exec runuser -u redis -- "$@" --protected-mode no
fi
exec "$@"
