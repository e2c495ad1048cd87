#!/bin/sh
# `make containers`: build the image and run compose.yaml for real with podman, then stop it.
# Not part of `make test` (minutes, root, apt). Steps, each timed in the output:
#   1. install podman, debootstrap, runc, iptables (apt) and podman-compose (PyPI, own venv);
#   2. make the stand-in base images (make-standin-bases.sh: no registry is reachable here);
#   3. build the image; check: no compiler on the PATH, uid not 0, its size;
#   4. the engine (postgres, redis, migrate, web, worker, beat): migrate exits 0, /readyz turns
#      200, web's health check (which is /readyz) turns healthy, /healthz and the sign-in page answer;
#   5. the demo profile: the sign-in page answers, the five sandboxes answer inside the container,
#      and a handoff succeeds (the demo firm's webhooks through worker, sandboxes and back);
#   6. stop and remove everything it started (containers, volumes, network).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/ops/containers
cd "$ROOT"
export CONTAINERS_CONF=$HERE/containers.conf
PROJECT=pscsync-check
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (apt-get, debootstrap, rootful podman)"

step "1. tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null \
    || ! command -v iptables >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap runc iptables >/dev/null
fi
VENV=$ROOT/var/containers/venv
[ -x "$VENV/bin/podman-compose" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"; }
podman --version; "$VENV/bin/podman-compose" --version | head -n 1

step "2. stand-in base images"
sh "$HERE/make-standin-bases.sh"
export PSCSYNC_PYTHON_IMAGE=localhost/pscsync-standin/python:3.11-slim-bookworm \
    PSCSYNC_POSTGRES_IMAGE=localhost/pscsync-standin/postgres:15-bookworm \
    PSCSYNC_REDIS_IMAGE=localhost/pscsync-standin/redis:7-bookworm

step "3. build pscsync:local"
b0=$(date +%s)
podman build --pull=never --format docker -q --build-arg PYTHON_IMAGE="$PSCSYNC_PYTHON_IMAGE" -t pscsync:local . >/dev/null
echo "built in $(( $(date +%s) - b0 )) s; size $(podman images localhost/pscsync:local --format '{{.Size}}')"
compilers=$(podman run --rm pscsync:local sh -c 'for c in gcc cc g++ c++ clang make; do command -v $c; done; true')
[ -z "$compilers" ] || fail "compilers in the image: $compilers"
uid=$(podman run --rm pscsync:local id -u)
[ "$uid" != 0 ] || fail "the image runs as root"
echo "no compiler on the PATH; runs as uid $uid"

# Throwaway keys and a free host port for this run only.
SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')
PSCSYNC_CREDENTIALS_KEYS=check:$(python3 -c 'import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())')
PSCSYNC_WEB_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SECRET_KEY PSCSYNC_CREDENTIALS_KEYS PSCSYNC_WEB_PORT
URL=http://127.0.0.1:$PSCSYNC_WEB_PORT
compose() { "$VENV/bin/podman-compose" -p "$PROJECT" "$@"; }

# Podman runs health checks from systemd timers; this machine has no systemd, so nothing would run
# them and podman 4.3 cannot `wait --condition=healthy` (podman-compose then skips
# `service_healthy`). This loop is the timer: it runs each container's own check every 5 s.
health_loop() {
    while :; do
        for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 5
    done
}
health_of() { podman inspect "$1" --format '{{.State.Health.Status}}' 2>/dev/null || echo none; }
wait_until() {  # seconds, description, command...
    limit=$1; what=$2; shift 2; start=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        [ $(( $(date +%s) - start )) -lt "$limit" ] || fail "$what: not within $limit s"
        sleep 3
    done
    echo "$what: after $(( $(date +%s) - start )) s"
}
http_ok() { curl -fsS -o /dev/null --max-time 5 "$1"; }
is_healthy() { [ "$(health_of "$1")" = healthy ]; }
cleanup() {
    [ -n "${LOOP:-}" ] && kill "$LOOP" 2>/dev/null || true
    compose --profile demo down -v -t 15 >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
health_loop & LOOP=$!

step "4. the engine: postgres, redis, migrate, web, worker, beat"
# In the order compose.yaml's depends_on gives, one phase at a time with --no-deps: podman 4.3
# cannot wait for "healthy", and podman-compose's --requires links between the containers fail
# to start on it ("generating dependency graph ... not found in input list").
compose up -d --no-deps postgres redis >/dev/null 2>&1
wait_until 120 "postgres healthy" is_healthy "${PROJECT}_postgres_1"
wait_until 60 "redis healthy" is_healthy "${PROJECT}_redis_1"
compose up -d --no-deps migrate >/dev/null 2>&1
migrate_exit=$(podman wait "${PROJECT}_migrate_1")
[ "$migrate_exit" = 0 ] || { podman logs "${PROJECT}_migrate_1" | tail -20; fail "migrate exited $migrate_exit"; }
echo "migrate exited 0"
compose up -d --no-deps web worker beat >/dev/null 2>&1
wait_until 240 "/readyz 200 (database, broker, worker, beat, sweeper)" http_ok "$URL/readyz"
curl -fsS "$URL/readyz"; echo
wait_until 60 "web's health check healthy" is_healthy "${PROJECT}_web_1"
http_ok "$URL/healthz" || fail "/healthz"
http_ok "$URL/login/" || fail "sign-in page"
echo "/healthz and the sign-in page answer 200"
compose down -v -t 30 >/dev/null 2>&1

step "5. the demo profile"
compose --profile demo up -d demo >/dev/null 2>&1
wait_until 300 "demo sign-in page 200" http_ok "$URL/login/"
DEMO=${PROJECT}_demo_1
sandboxes_answer() {
    podman exec "$DEMO" python -c '
import urllib.error, urllib.request
for port in range(8790, 8795):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)
    except urllib.error.HTTPError:
        pass  # an HTTP answer of any status: the sandbox is up
'
}
wait_until 180 "the five sandboxes (8790-8794) answer" sandboxes_answer
handoff_succeeded() {
    n=$(podman exec "$DEMO" sh -c 'set -a; . /app/var/demo.env; python manage.py shell -v 0 -c "from pscsync.models import Handoff; print(Handoff.objects.filter(status=\"succeeded\").count())"' 2>/dev/null | tail -n 1)
    [ "${n:-0}" -gt 0 ] 2>/dev/null && echo "$n handoffs succeeded"
}
wait_until 600 "a handoff succeeded in the demo" handoff_succeeded
handoff_succeeded

step "6. stop"
compose --profile demo down -v -t 15 >/dev/null 2>&1
kill "$LOOP" 2>/dev/null || true; LOOP=
step "all passed"
