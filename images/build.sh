#!/usr/bin/env bash
# Build datarun's container images with podman, without any container registry:
#
#   localhost/datarun-base:bookworm      Debian bookworm minbase from debootstrap (the BASE_IMAGE here)
#   localhost/datarun-sidecar:<version>  datarun-sidecar (fuse, postgres), the datarun CLI, wrap_application.sh
#   localhost/datarun-wrapper:<version>  busybox + wrap_application.sh, for the run pod's init container
#   localhost/datarun-operator:<version> python -m datarun_operator
#
# Usage: images/build.sh [--force] [--print-tags]
#   --force       rebuild even when the images match the sources
#   --print-tags  print "<name>=<image>" lines for the built images (after building) on stdout
#
# Idempotent and cached: the base is made once; the three images are rebuilt only when a hash of
# the sources they contain changed (it is stored as the image label datarun.source-hash).
# Wheels are built on the host and installed offline inside the images, because pip over TLS
# does not work inside `podman build` on these machines while apt does.
# Environment: DATARUN_VENV (default .venv, whose pip builds the wheels), BASE_IMAGE (skip debootstrap
# and build on this image instead), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${DATARUN_VENV:-$ROOT/.venv}
CACHE=$ROOT/.cache/images
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/datarun-base:bookworm
FORCE=0
PRINT=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --print-tags) PRINT=1 ;;
    *) echo "usage: images/build.sh [--force] [--print-tags]" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# -- tools -------------------------------------------------------------------------------------

# podman (with runc, see below) builds and runs the images; debootstrap makes the base; gcc, pkg-config and libfuse3-dev
# let the host build pyfuse3's wheel (it has no binary wheel on PyPI).
need=()
for pkg in podman runc debootstrap gcc pkg-config libfuse3-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Set `key = value` in a section of containers.conf unless the key is already set there.
CONF=/etc/containers/containers.conf
conf_default() {
  local section=$1 key=$2 value=$3
  if awk -v s="[$section]" -v k="$key" '
      /^[[:space:]]*\[/ { here = ($1 == s) }
      here && $1 == k { found = 1 }
      END { exit !found }' "$CONF" 2>/dev/null; then
    return
  fi
  log "setting $key = $value under [$section] in $CONF"
  as_root mkdir -p "$(dirname "$CONF")"
  as_root touch "$CONF"
  if grep -q "^\[$section\]" "$CONF"; then
    as_root sed -i "s/^\[$section\]\$/&\n$key = $value/" "$CONF"
  else
    printf '\n[%s]\n%s = %s\n' "$section" "$key" "$value" | as_root tee -a "$CONF" >/dev/null
  fi
}
# Root on these machines lacks CAP_SYS_RESOURCE, and podman's default rlimits (nofile 1048576)
# are above the hard limits, so every container start fails with "error setting rlimit".
# An empty default_ulimits makes containers inherit the caller's limits.
conf_default containers default_ulimits "[]"
# crun refuses hybrid cgroup v1/v2 hierarchies ("cgroups in hybrid mode not supported"), which
# is what these machines have; runc runs on them.
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
  conf_default engine runtime '"runc"'
fi

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
[ -n "$VERSION" ] || { echo "error: no version in pyproject.toml" >&2; exit 1; }

# -- the base ------------------------------------------------------------------------------------

if [ -n "${BASE_IMAGE:-}" ]; then
  BASE=$BASE_IMAGE
else
  BASE=$LOCAL_BASE
  if ! podman image exists "$BASE"; then
    log "debootstrap bookworm minbase -> $BASE (about a minute, once)"
    root_dir=$(mktemp -d "${TMPDIR:-/tmp}/datarun-rootfs.XXXXXX")
    trap 'as_root rm -rf "$root_dir"' EXIT
    as_root debootstrap --variant=minbase bookworm "$root_dir" "$MIRROR" >/dev/null
    # debootstrap leaves its downloaded .debs and apt lists behind; the images run apt-get update anyway.
    as_root rm -rf "$root_dir"/var/cache/apt/archives/*.deb "$root_dir"/var/lib/apt/lists/*
    as_root tar -C "$root_dir" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/sh"]' - "$BASE" >/dev/null
    as_root rm -rf "$root_dir"
    trap - EXIT
  fi
fi

# -- wheels and the build context ----------------------------------------------------------------

# The images' Python is Debian bookworm's 3.11; the host's wheels must be for the same minor version.
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "error: $VENV/bin/python must be Python 3.11 (the images run Debian bookworm's python3)" >&2
  exit 1
fi

# What goes into each image; its hash decides whether the image is rebuilt.
sources_of() {
  local paths=(wrap_application.sh "images/$1.Containerfile")
  case "$1" in
    sidecar) paths+=(pyproject.toml README.md datarun sidecar/datarun_sidecar) ;;
    operator) paths+=(pyproject.toml README.md datarun operator/datarun_operator) ;;
  esac
  git ls-files -co --exclude-standard -- "${paths[@]}" | grep -v '\.pyc$' | sort
}
hash_of() { (sources_of "$1" | xargs sha256sum; echo "base=$BASE") | sha256sum | cut -c1-16; }

NAMES=(sidecar wrapper operator)
tag_of() { echo "localhost/datarun-$1:$VERSION"; }
current() {
  podman image exists "$(tag_of "$1")" &&
    [ "$(podman image inspect --format '{{index .Labels "datarun.source-hash"}}' "$(tag_of "$1")")" = "$(hash_of "$1")" ]
}

stale=()
for name in "${NAMES[@]}"; do
  if [ "$FORCE" -eq 1 ] || ! current "$name"; then stale+=("$name"); fi
done

if ((${#stale[@]})); then
  CONTEXT=$CACHE/context
  rm -rf "$CONTEXT"
  mkdir -p "$CONTEXT/wheels"
  log "building wheels of datarun[fuse,azure,gcs,operator,web] on the host"
  # pip reuses its HTTP and wheel caches, so after the first time this only rebuilds datarun itself.
  "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check -w "$CONTEXT/wheels" \
    ".[fuse,azure,gcs,operator,web]" >/dev/null
  cp wrap_application.sh "$CONTEXT/"
  for name in "${stale[@]}"; do
    tag=$(tag_of "$name")
    log "podman build $tag"
    # podman's layer cache keeps the apt layers, so a source change rebuilds only the Python layers.
    podman build -q --pull=never --build-arg "BASE_IMAGE=$BASE" --label "datarun.source-hash=$(hash_of "$name")" \
      --label "org.opencontainers.image.version=$VERSION" -f "images/$name.Containerfile" -t "$tag" "$CONTEXT" \
      > >(grep -v -e '^debconf: delaying' -e '^[0-9a-f]\{64\}$' >&2)
  done
fi

for name in "${NAMES[@]}"; do
  tag=$(tag_of "$name")
  size=$(podman image inspect --format '{{.Size}}' "$tag")
  log "$(printf '%-40s %6d MB' "$tag" $((size / 1000000)))"
done
if [ "$PRINT" -eq 1 ]; then
  echo "base=$BASE"
  for name in "${NAMES[@]}"; do echo "$name=$(tag_of "$name")"; done
fi
