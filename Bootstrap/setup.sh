#!/usr/bin/env bash
# Bootstrap/setup.sh: install the system packages GPUMesh builds and tests against.
#
# Idempotent: a package already installed is left alone, and apt-get runs only when
# something is missing. Run as root, or as a user with sudo. Exits non-zero with a
# clear message when a package cannot be installed.
#
#   Bootstrap/setup.sh            packages for building, running and testing
#   GPUMESH_SETUP_QUIET=1 ...     print only what changes
#   GPUMESH_SETUP_BROWSER=0 ...   skip headless Chromium (only the explorer's browser test uses it)
set -euo pipefail

# Debian package -> why we need it.
packages=(
  "libuv1-dev:event loop, UDP, TCP, pipes and timers (MeshRuntime)"
  "libsodium-dev:all cryptography (MeshCrypto)"
  "libsqlite3-dev:the ledger's storage, through GRDB"
  "pkg-config:lets SwiftPM find libuv and libsodium"
  "bubblewrap:the sandbox job executor"
  "util-linux:prlimit and setpriv, the sandbox's limits and unprivileged user"
  "iproute2:network namespaces for Bootstrap/netns-mesh.sh and its test"
)

say() { [ "${GPUMESH_SETUP_QUIET:-0}" = 1 ] || echo "setup: $*"; }

missing=()
for entry in "${packages[@]}"; do
  name=${entry%%:*}
  why=${entry#*:}
  if dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
    say "ok       $name ($why)"
  else
    say "missing  $name ($why)"
    missing+=("$name")
  fi
done

# Optional: the Python packages of the interoperability test (Tests/interop/python_peer.py),
# an independent peer built from a stock Noise library and libsodium bindings. Without them
# that one test is skipped with its reason; nothing else needs Python.
python_interop() {
  command -v python3 >/dev/null 2>&1 || { say "skip     python interop packages (no python3)"; return 0; }
  if python3 -c 'import noise, nacl' >/dev/null 2>&1; then
    say "ok       noiseprotocol, pynacl (python interop test)"
    return 0
  fi
  say "installing noiseprotocol, pynacl for the python interop test"
  python3 -m pip install --quiet --disable-pip-version-check noiseprotocol pynacl >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages noiseprotocol pynacl >/dev/null 2>&1 \
    || echo "setup: warning: could not pip-install noiseprotocol and pynacl; the python interop test will be skipped" >&2
}

# Optional: Debian's chromium, for the explorer's browser test (Tests/GPUMeshCLITests/
# BrowserTests.swift) and Docs/make-screenshots.sh; nothing else needs a browser. Without it
# that suite is skipped with its reason.
browser() {
  [ "${GPUMESH_SETUP_BROWSER:-1}" = 0 ] && { say "skip     chromium (GPUMESH_SETUP_BROWSER=0)"; return 0; }
  if dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
    say "ok       chromium (the explorer's browser test)"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || { say "skip     chromium (no apt-get)"; return 0; }
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { say "skip     chromium (not root and no sudo)"; return 0; }
    sudo=(sudo)
  fi
  say "installing chromium for the explorer's browser test"
  export DEBIAN_FRONTEND=noninteractive
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "setup: warning: could not install chromium; the explorer's browser test will be skipped" >&2
}

if [ ${#missing[@]} -eq 0 ]; then
  say "all system packages present"
  python_interop
  browser
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: error: apt-get not found; install these by hand: ${missing[*]}" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "setup: error: not root and no sudo; as root run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get update -qq; then
  echo "setup: error: apt-get update failed (no network to the Debian mirror?)" >&2
  exit 1
fi
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  echo "setup: error: could not install: ${missing[*]}" >&2
  exit 1
fi
echo "setup: installed ${missing[*]}"
python_interop
browser
