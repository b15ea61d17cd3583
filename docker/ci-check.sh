#!/usr/bin/env bash
# docker/ci-check.sh — build and test the CPU image (docker/Dockerfile.cpu) on a machine with no
# Docker engine running and no container registry in reach (such as this project's CI machines).
#
#   sudo bash docker/ci-check.sh        # root: it installs packages and starts a private dockerd
#
# What it does, and undoes on exit (trap):
#   1. installs docker.io and debootstrap with apt-get if they are missing;
#   2. starts a private dockerd (own data root, exec root, unix socket and bridge under a temp
#      dir; no iptables rules, no IP forwarding: containers cannot reach the network), stopped by
#      PID on exit;
#   3. builds a STAND-IN base image: `debootstrap --variant=minbase bookworm` from the configured
#      Debian mirror with python3, pip, venv and CA certificates (plus the host's extra CAs),
#      imported under a name that says so. It stands in for python:3.11-slim, which cannot be
#      pulled here;
#   4. builds docker/Dockerfile.cpu on it (host network for pip; the host's pip configuration is
#      mirrored through build args, and the torch CPU wheel pip resolves here is staged in a
#      temporary copy of the build context);
#   5. runs the image with --memory/--cpus limits, a read-only root filesystem, no capabilities,
#      API keys from a mounted file and the port published on 127.0.0.1 only; waits for the
#      HEALTHCHECK to report healthy; runs docker/smoke.py (safe and unsafe inputs, response
#      shape, no score for a classify key, confidence for an internal key, metrics scope; keys
#      read from the keys file, never passed on a command line);
#      checks no process in the container runs as root; stops it (graceful exit expected);
#   6. removes the container, images, dockerd state, bridge and temp dir.
#
# Environment: GUARDCAL_CI_MEMORY (3g), GUARDCAL_CI_CPUS (1.5), GUARDCAL_CI_READY_TIMEOUT (600 s),
# GUARDCAL_CI_MIRROR (default: the bookworm URI in /etc/apt/sources*), GUARDCAL_CI_WORKDIR
# (parent of the temp dir, default /tmp).
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MEMORY=${GUARDCAL_CI_MEMORY:-3g}
CPUS=${GUARDCAL_CI_CPUS:-1.5}
READY_TIMEOUT=${GUARDCAL_CI_READY_TIMEOUT:-600}
STANDIN=guardcal-ci/standin-for-python-3.11-slim:debootstrap-bookworm-minbase
IMAGE=guardcal-ci/guardcal-cpu:check
CONTAINER=guardcal-ci-check-$$
BRIDGE=gcci$$
BRIDGE_CIDR=172.31.254.1/24
PACKAGES=python3,python3-pip,python3-venv,ca-certificates

step() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { printf 'ci-check: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts a private dockerd and a bridge)"

# ---------------------------------------------------------------- 1. tools
step "tools"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive nice -n 5 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the docker.io client matches its daemon (legacy builder, no buildx needed)
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker) || die "no docker client after installing docker.io"
echo "dockerd $(dockerd --version | cut -d' ' -f3 | tr -d ,), client $DOCKER, $(debootstrap --version)"

# ---------------------------------------------------------------- cleanup (trap)
WORK=$(mktemp -d "${GUARDCAL_CI_WORKDIR:-/tmp}/guardcal-ci.XXXXXX")
DOCKERD_PID=""
cleanup() {
    local rc=$?
    set +e
    step "cleanup"
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1
        "$DOCKER" rmi -f "$IMAGE" "$STANDIN" >/dev/null 2>&1
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
        echo "stopped dockerd (pid $DOCKERD_PID)"
    fi
    local cpid
    cpid=$(cat "$WORK/exec/containerd/containerd.pid" 2>/dev/null)
    if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null; then kill -TERM "$cpid"; sleep 2; fi
    # mounts left under the temp dir (overlays, network namespaces), deepest first
    awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
    rm -rf "$WORK"
    echo "removed $WORK and bridge $BRIDGE; wall time $(($(date +%s) - START)) s"
    if [ "$rc" = 0 ]; then echo "ci-check: PASSED"; else echo "ci-check: FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 2. private dockerd
step "private dockerd under $WORK"
ip link add name "$BRIDGE" type bridge
ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
ip link set "$BRIDGE" up
export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/docker-config" DOCKER_BUILDKIT=0
mkdir -p "$DOCKER_CONFIG"
# niced: every build step and container runs below the machine's other work
nice -n 5 dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --host "$DOCKER_HOST" \
    --pidfile "$WORK/dockerd.pid" --bridge "$BRIDGE" --iptables=false --ip-forward=false --ip-masq=false \
    >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do "$DOCKER" version >/dev/null 2>&1 && break; sleep 1; done
"$DOCKER" version --format 'engine {{.Server.Version}} up (pid '"$DOCKERD_PID"')' \
    || { tail -20 "$WORK/dockerd.log"; die "dockerd did not start"; }

# ---------------------------------------------------------------- 3. stand-in base
debian_mirror() {
    local url=""
    if [ -n "${GUARDCAL_CI_MIRROR:-}" ]; then echo "$GUARDCAL_CI_MIRROR"; return; fi
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
        url=$(awk '/^URIs:/ {u=$2} /^Suites:/ && u != "" && / bookworm( |$)/ {print u; exit}' \
            /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
        url=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list | awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}')
    fi
    echo "${url:-http://deb.debian.org/debian}"
}
MIRROR=$(debian_mirror)
step "stand-in base: debootstrap --variant=minbase bookworm from $MIRROR"
ROOTFS="$WORK/rootfs"
nice -n 5 debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log"; die "debootstrap failed"; }
extra_cas=0
for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] || continue
    cp "$crt" "$ROOTFS/usr/local/share/ca-certificates/"
    extra_cas=$((extra_cas + 1))
done
chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the stand-in"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/tmp/*
echo "copied $extra_cas extra CA certificate(s) from the host; $(chroot "$ROOTFS" python3 --version)"
tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "guardcal ci-check stand-in for python:3.11-slim (debootstrap bookworm minbase)" - "$STANDIN" >/dev/null
rm -rf "$ROOTFS"
echo "imported $STANDIN ($("$DOCKER" image inspect -f '{{.Size}}' "$STANDIN" | awk '{printf "%.0f MB", $1/1e6}'))"

# ---------------------------------------------------------------- 4. build
step "build context: the working tree as git sees it, plus the torch CPU wheel"
CTX="$WORK/context"
mkdir -p "$CTX"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -C "$CTX" -xf -
nice -n 5 python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    torch==2.13.0 -d "$CTX/docker/wheels"
wheel=$(cd "$CTX/docker/wheels" && ls torch-*.whl)
case "$wheel" in *+cpu*) echo "staged $wheel (as this machine's pip resolves torch==2.13.0)" ;;
*) die "pip resolved torch==2.13.0 to $wheel, not a CPU build; point pip at a CPU wheel (find-links or index)" ;;
esac

# the host's pip configuration, as build args; file:// indexes cannot be seen from the build
eval "$(python3 - <<'EOF'
import shlex, subprocess
out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
found = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    variant, _, name = key.rpartition(".")
    rank = {":env:": 0, "site": 1, "user": 2, "global": 3}.get(variant, 4)
    if name not in found or rank < found[name][0]:
        found[name] = (rank, value.strip().strip("'\""))
index = found.get("index-url", (0, ""))[1]
extras = found.get("extra-index-url", (0, ""))[1].split()
keep = [u for u in extras if u.startswith(("http://", "https://"))]
dropped = [u for u in extras if u not in keep]
if index and not index.startswith(("http://", "https://")):
    dropped.append(index)
    index = ""
print(f"PIP_INDEX={shlex.quote(index)}; PIP_EXTRAS={shlex.quote(' '.join(keep))}; PIP_DROPPED={shlex.quote(' '.join(dropped))}")
EOF
)"
echo "pip index: ${PIP_INDEX:-PyPI (pip default)}; extra indexes: ${PIP_EXTRAS:-none}"
[ -z "$PIP_DROPPED" ] || echo "not visible inside the build, left out: $PIP_DROPPED"

step "docker build -f docker/Dockerfile.cpu --build-arg BASE_IMAGE=$STANDIN"
build_start=$(date +%s)
nice -n 5 "$DOCKER" build --network host -f "$CTX/docker/Dockerfile.cpu" -t "$IMAGE" \
    --build-arg BASE_IMAGE="$STANDIN" \
    --build-arg TORCH_INDEX_URL= \
    --build-arg PIP_INDEX_URL_BUILD="$PIP_INDEX" \
    --build-arg PIP_EXTRA_INDEX_URLS_BUILD="$PIP_EXTRAS" \
    --build-arg PIP_CERT_BUILD=/etc/ssl/certs/ca-certificates.crt \
    "$CTX" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; die "docker build failed"; }
grep -E '^Step [0-9]+/|installed torch|^Successfully' "$WORK/build.log" || true
IMAGE_BYTES=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
IMAGE_MB=$(awk -v b="$IMAGE_BYTES" 'BEGIN {printf "%.0f", b/1e6}')
echo "built $IMAGE in $(($(date +%s) - build_start)) s: $IMAGE_MB MB"
"$DOCKER" history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110 | head -12 || true  # display only: a SIGPIPE here must not fail the check

# ---------------------------------------------------------------- 5. run and check
step "run: --memory $MEMORY --cpus $CPUS --read-only --cap-drop ALL, port on 127.0.0.1 only"
key() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
printf '%s:classify\n%s:internal\n%s:metrics\n' "$(key)" "$(key)" "$(key)" >"$WORK/api_keys"
chmod 0644 "$WORK/api_keys"
echo "(docker may warn that IPv4 forwarding is disabled: intended, the container gets no route out)"
"$DOCKER" run -d --name "$CONTAINER" --memory "$MEMORY" --cpus "$CPUS" \
    --read-only --tmpfs /tmp:rw,size=256m --cap-drop ALL --security-opt no-new-privileges \
    -p 127.0.0.1::8000 \
    -v "$WORK/api_keys:/run/secrets/guardcal_api_keys:ro" -e GUARDCAL_API_KEYS_FILE=/run/secrets/guardcal_api_keys \
    "$IMAGE" >/dev/null
HOSTPORT=$("$DOCKER" port "$CONTAINER" 8000/tcp | head -1)
case "$HOSTPORT" in 127.0.0.1:*) echo "published on $HOSTPORT (loopback only)" ;;
*) die "port published on '$HOSTPORT', expected 127.0.0.1:PORT" ;;
esac

run_start=$(date +%s)
health=""
while [ $(($(date +%s) - run_start)) -lt "$READY_TIMEOUT" ]; do
    health=$("$DOCKER" inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "$CONTAINER")
    case "$health" in
    running/healthy) break ;;
    running/*) sleep 3 ;;
    *) "$DOCKER" logs "$CONTAINER" 2>&1 | tail -40; die "container is $health before becoming healthy" ;;
    esac
done
[ "$health" = running/healthy ] || { "$DOCKER" logs "$CONTAINER" 2>&1 | tail -40; die "not healthy after $READY_TIMEOUT s ($health)"; }
echo "healthy after $(($(date +%s) - run_start)) s (HEALTHCHECK on /readyz)"

step "HTTP checks (docker/smoke.py against http://$HOSTPORT)"
python3 "$REPO/docker/smoke.py" --url "http://$HOSTPORT" --keys-file "$WORK/api_keys" \
    || { "$DOCKER" logs "$CONTAINER" 2>&1 | tail -40; die "HTTP checks failed"; }

step "non-root"
config_user=$("$DOCKER" inspect -f '{{.Config.User}}' "$CONTAINER")
uid_inside=$("$DOCKER" exec "$CONTAINER" id -u)
pid1_uids=$("$DOCKER" exec "$CONTAINER" sh -c 'grep ^Uid: /proc/1/status' | cut -f2-)
host_uids=$("$DOCKER" top "$CONTAINER" -eo pid,uid,args | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')
[ -n "$host_uids" ] || die "could not list the container's processes (docker top)"
echo "image USER $config_user; id -u inside: $uid_inside; PID 1 Uid (real/eff/saved/fs): $pid1_uids; uids seen from the host: $host_uids"
[ "$uid_inside" != 0 ] || die "the server runs as root inside the container"
echo "$pid1_uids" | awk '{for (i = 1; i <= NF; i++) if ($i == 0) bad = 1} END {exit bad}' \
    || die "PID 1 has a root uid ($pid1_uids)"
for u in $host_uids; do
    if [ "$u" = 0 ] || [ "$u" = root ]; then die "a container process runs as root on the host"; fi
done
"$DOCKER" exec "$CONTAINER" sh -c 'touch /opt/guardcal/x 2>/dev/null' && die "the image's files are writable at run time"
echo "no process runs as root; the root filesystem is read-only"

step "stop (SIGTERM, graceful drain)"
stop_start=$(date +%s)
"$DOCKER" stop -t 60 "$CONTAINER" >/dev/null
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
# read the log once: `docker logs | grep -q` fails under pipefail when grep exits at the first match
# and docker logs then dies of SIGPIPE (it failed CI that way with the line present)
final_log=$("$DOCKER" logs "$CONTAINER" 2>&1)
tail -4 <<<"$final_log"
# 0, or 143 when uvicorn re-raises SIGTERM after its shutdown; 137 would be docker's SIGKILL
case "$exit_code" in 0 | 143) ;; *) die "the server exited with $exit_code on SIGTERM (expected 0 or 143)" ;; esac
grep -q "Application shutdown complete" <<<"$final_log" || die "no graceful shutdown in the log"
echo "graceful shutdown in $(($(date +%s) - stop_start)) s (exit $exit_code)"

step "summary"
echo "NOTE: the image was built FROM a stand-in base ($STANDIN: Debian bookworm minbase with python3,"
echo "      made by debootstrap from $MIRROR), not from python:3.11-slim, which cannot be pulled here."
echo "image $IMAGE: $IMAGE_MB MB ($IMAGE_BYTES bytes); wall time so far $(($(date +%s) - START)) s"
