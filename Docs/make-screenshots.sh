#!/usr/bin/env bash
# Docs/make-screenshots.sh: remakes Docs/explorer-overview.png and Docs/explorer-peer.png with
# headless Chromium (the browser the explorer's browser test uses) from a running demo mesh.
#
#   Docs/make-screenshots.sh [path/to/gpumesh]    (default: .build/debug/gpumesh)
#
# Needs Debian's chromium (Bootstrap/setup.sh installs it). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
gpumesh=${1:-.build/debug/gpumesh}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -x "$gpumesh" ] || { echo "no gpumesh binary at $gpumesh: run swift build first" >&2; exit 1; }
[ -n "$browser" ] || { echo "no chromium: run Bootstrap/setup.sh" >&2; exit 1; }

work=$(mktemp -d)
log=$work/demo.out
# The demo keeps running with --explorer; its descriptors are not the caller's.
"$gpumesh" demo --explorer 127.0.0.1:0 </dev/null >"$log" 2>&1 &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 1 120); do
  grep -q "the mesh stays up" "$log" && break
  kill -0 $demo 2>/dev/null || { cat "$log" >&2; echo "the demo stopped" >&2; exit 1; }
  sleep 1
done
grep -q "the mesh stays up" "$log" || { echo "the demo did not finish its story in 120 s" >&2; exit 1; }
url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$log" | head -1)
port=${url##*:}; port=${port%/}
sleep 6  # a heartbeat from every provider

get() {  # plain HTTP over bash's /dev/tcp
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&3
  cat <&3
  exec 3<&-
}
peer=$(get /api/rewards | grep -o '"peer_id":"[0-9a-f]*"' | head -1 | cut -d'"' -f4)
[ -n "$peer" ] || { echo "no provider with points in the demo's rewards" >&2; exit 1; }

shot() {
  "$browser" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars --user-data-dir="$work/profile" \
    --window-size=1280,"$3" --screenshot="$2" "$1" >/dev/null 2>&1
  echo "wrote $2"
}
shot "${url}" Docs/explorer-overview.png 1400
shot "${url}peers/$peer" Docs/explorer-peer.png 1700
