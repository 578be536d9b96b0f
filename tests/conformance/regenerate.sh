#!/usr/bin/env bash
# regenerate.sh [CASE...]
#
# Rebuild the expected results of the conformance cases with Docker BuildKit.
# For every case (default: all directories under cases/):
#   prepare.sh cases/NAME -> fresh temp context
#   DOCKER_BUILDKIT=1 /usr/bin/docker build --network=none [--build-arg K=V]... [--target T] -f CTX/DOCKERFILE CTX
#   success: docker save | fsdump.py [--mask-sha256-of /bin/busybox] -> expected/NAME.json
#            (NAME.error.txt removed)
#   failure: BuildKit's error message -> expected/NAME.error.txt  (NAME.json removed)
# and writes expected/BUILDKIT_VERSION (server part of `/usr/bin/docker version`).
#
# Daemon: uses $DOCKER_HOST (default unix:///tmp/dockerd/docker.sock). If nothing
# answers there, a private dockerd is started with
#   dockerd --data-root /tmp/dockerd/root --exec-root /tmp/dockerd/exec \
#           -H unix:///tmp/dockerd/docker.sock --pidfile /tmp/dockerd/pid \
#           --iptables=false --bridge=none
# (log in /tmp/dockerd/dockerd.log) and left running for later runs.
#
# Always /usr/bin/docker: /usr/local/bin/docker on the reference machine is a
# different, newer client.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER_HOST=${DOCKER_HOST:-unix:///tmp/dockerd/docker.sock}
export DOCKER_BUILDKIT=1
TAG_PREFIX=memobuild-conformance
# Network of RUN steps. The private dockerd runs with --bridge=none, where
# BuildKit's default (bridge) network fails every RUN with "network bridge not
# found"; no case needs a network, so RUN steps get none.
BUILD_NETWORK=${BUILD_NETWORK:-none}
# The RUN cases copy the host's busybox (busybox-static) into their images;
# its bytes depend on the package version, so fsdump masks them (the Rust
# test's fsdump call does the same).
mask=()
if [ -e /bin/busybox ]; then
    mask=(--mask-sha256-of /bin/busybox)
fi

ensure_daemon() {
    if "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        return
    fi
    if [ "$DOCKER_HOST" != unix:///tmp/dockerd/docker.sock ]; then
        echo "regenerate.sh: no docker daemon answers at $DOCKER_HOST" >&2
        exit 1
    fi
    echo "regenerate.sh: no daemon at $DOCKER_HOST, starting a private dockerd:" >&2
    mkdir -p /tmp/dockerd
    echo "  dockerd --data-root /tmp/dockerd/root --exec-root /tmp/dockerd/exec -H $DOCKER_HOST --pidfile /tmp/dockerd/pid --iptables=false --bridge=none  (log: /tmp/dockerd/dockerd.log)" >&2
    nohup dockerd --data-root /tmp/dockerd/root --exec-root /tmp/dockerd/exec \
        -H "$DOCKER_HOST" --pidfile /tmp/dockerd/pid \
        --iptables=false --bridge=none >/tmp/dockerd/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
            echo "regenerate.sh: dockerd is up (pid $(cat /tmp/dockerd/pid))" >&2
            return
        fi
        sleep 1
    done
    echo "regenerate.sh: dockerd did not come up, see /tmp/dockerd/dockerd.log" >&2
    exit 1
}

# case_opt CASE_DIR KEY -> prints the option (dockerfile/target) or build args as
# K=V lines (KEY=build_args); empty when absent.
case_opt() {
    python3 - "$1" "$2" <<'PY'
import json, os, sys
d, key = sys.argv[1], sys.argv[2]
p = os.path.join(d, "case.json")
cfg = json.load(open(p)) if os.path.exists(p) else {}
v = cfg.get(key)
if v is None:
    sys.exit(0)
if key == "build_args":
    for k in sorted(v):
        print("%s=%s" % (k, v[k]))
else:
    print(v)
PY
}

# Reduce BuildKit's plain progress output to its final error message, i.e. the
# lines after the progress stream that do not belong to a step ("#N ...") or to
# the "------" excerpt box, with the temp context path replaced by <CONTEXT>.
error_message() {
    python3 - "$1" "$2" <<'PY'
import re, sys
log, ctx = sys.argv[1], sys.argv[2]
lines = open(log, encoding="utf-8", errors="replace").read().splitlines()
out, inbox = [], False
for l in lines:
    if l.strip() == "------":
        inbox = not inbox
        continue
    if inbox or l.startswith("#") or not l.strip():
        continue
    l = l.replace(ctx, "<CONTEXT>")
    # daemon-internal snapshot dirs and digests change from run to run
    l = re.sub(r"/overlay2/[A-Za-z0-9]+/", "/overlay2/<ID>/", l)
    l = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<DIGEST>", l)
    out.append(l)
print("\n".join(out))
PY
}

run_case() {
    local name=$1
    local cdir=$here/cases/$name
    local work ctx dockerfile target
    work=$(mktemp -d /tmp/memobuild-conformance.XXXXXX)
    ctx=$work/context
    "$here/prepare.sh" "$cdir" "$ctx"

    dockerfile=$(case_opt "$cdir" dockerfile)
    target=$(case_opt "$cdir" target)
    local args=(build --no-cache --progress=plain --network="$BUILD_NETWORK" -t "$TAG_PREFIX-$name:latest")
    args+=(-f "$ctx/${dockerfile:-Dockerfile}")
    [ -n "$target" ] && args+=(--target "$target")
    while IFS= read -r kv; do
        [ -n "$kv" ] && args+=(--build-arg "$kv")
    done < <(case_opt "$cdir" build_args)
    args+=("$ctx")

    if "$DOCKER" "${args[@]}" >"$work/build.log" 2>&1; then
        local image=$TAG_PREFIX-$name:latest nlayers
        nlayers=$("$DOCKER" image inspect --format '{{len .RootFS.Layers}}' "$image")
        if [ "$nlayers" = 0 ]; then
            # docker 20.10 cannot save an image without layers ("empty export");
            # its config is taken from `docker image inspect` instead.
            "$DOCKER" image inspect "$image" >"$work/inspect.json"
            python3 "$here/fsdump.py" "${mask[@]}" --docker-inspect "$work/inspect.json" >"$work/out.json"
        else
            "$DOCKER" save -o "$work/image.tar" "$image"
            python3 "$here/fsdump.py" "${mask[@]}" "$work/image.tar" >"$work/out.json"
        fi
        mv "$work/out.json" "$here/expected/$name.json"
        rm -f "$here/expected/$name.error.txt"
        "$DOCKER" rmi "$TAG_PREFIX-$name:latest" >/dev/null 2>&1 || true
        echo "ok     $name"
    else
        error_message "$work/build.log" "$ctx" >"$here/expected/$name.error.txt"
        rm -f "$here/expected/$name.json"
        echo "error  $name: $(tail -n 1 "$here/expected/$name.error.txt")"
    fi
    rm -rf "$work"
}

ensure_daemon
mkdir -p "$here/expected"

if [ $# -gt 0 ]; then
    cases=("$@")
else
    cases=()
    for d in "$here"/cases/*/; do
        cases+=("$(basename "$d")")
    done
fi

for c in "${cases[@]}"; do
    c=${c%/}; c=${c##*/}
    if [ ! -d "$here/cases/$c" ]; then
        echo "regenerate.sh: no such case: $c" >&2
        exit 1
    fi
    run_case "$c"
done

"$DOCKER" version | sed -n '/^Server/,$p' >"$here/expected/BUILDKIT_VERSION"
{
    echo
    echo "BuildKit: the builder embedded in (vendored into) the dockerd above;"
    echo "builds ran with DOCKER_BUILDKIT=1 /usr/bin/docker build (client $("$DOCKER" version --format '{{.Client.Version}}'))."
} >>"$here/expected/BUILDKIT_VERSION"
