#!/usr/bin/env bash
# Bootstrap/netns-mesh.sh: a private mesh of N hosts on one machine, one network namespace each.
#
#   Bootstrap/netns-mesh.sh up N      N namespaces on a bridge (10.77.0.0/24, the bridge itself in
#                                     a namespace of its own), a fresh mesh key, one `gpumesh node`
#                                     per namespace; node 1 is every other node's bootstrap peer
#   Bootstrap/netns-mesh.sh status    each node's status, asked inside its namespace
#   Bootstrap/netns-mesh.sh down      stops the nodes and removes the namespaces and files
#
# Needs root (network namespaces) and iproute2. Nothing touches the host's own network: every
# address lives inside the namespaces this script creates. Environment:
#   GPUMESH_BIN            the gpumesh executable (default: .build/debug/gpumesh, else PATH)
#   GPUMESH_NETNS_PREFIX   namespace name prefix (default gmns)
#   GPUMESH_NETNS_STATE    where data directories, logs and PIDs go (default /tmp/gpumesh-netns)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${GPUMESH_NETNS_PREFIX:-gmns}
state=${GPUMESH_NETNS_STATE:-/tmp/gpumesh-netns}
bin=${GPUMESH_BIN:-$here/.build/debug/gpumesh}
[ -x "$bin" ] || bin=$(command -v gpumesh || true)
hub="${prefix}-hub"
subnet=10.77.0

die() { echo "netns-mesh: error: $*" >&2; exit 1; }
say() { echo "netns-mesh: $*"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "network namespaces need root (run with sudo)"
  command -v ip >/dev/null || die "ip (iproute2) not found: Bootstrap/setup.sh installs it"
}

up() {
  local n=${1:-}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 200 ] || die "usage: $0 up N (N from 2 to 200)"
  need_root
  [ -n "$bin" ] && [ -x "$bin" ] || die "no gpumesh executable (build it: swift build --product gpumesh, or set GPUMESH_BIN)"
  [ -e "$state/namespaces" ] && die "a mesh is already up (state in $state): run '$0 down' first"
  mkdir -p "$state"
  : > "$state/namespaces"
  : > "$state/pids"
  trap 'echo "netns-mesh: setting up failed; cleaning up" >&2; down >/dev/null 2>&1 || true' ERR

  ip netns add "$hub"
  echo "$hub" >> "$state/namespaces"
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  ip -n "$hub" link set lo up
  for i in $(seq 1 "$n"); do
    local ns="$prefix$i"
    ip netns add "$ns"
    echo "$ns" >> "$state/namespaces"
    ip -n "$hub" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "v$i" master br0 up
    ip -n "$ns" addr add "$subnet.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done

  # The nodes outlive this script: they must not inherit descriptors it was given (a caller's
  # pipe would never see end-of-file).
  for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  "$bin" mesh-key new --out "$state/mesh.key" >/dev/null
  local contact=""
  for i in $(seq 1 "$n"); do
    local ns="$prefix$i" dir="$state/peer$i"
    "$bin" init --data-dir "$dir" >/dev/null
    local args=(node --data-dir "$dir" --udp "$subnet.$i:7400" --tcp "$subnet.$i:7400" --mesh-key "$state/mesh.key" --json)
    [ -n "$contact" ] && args+=(--bootstrap "$contact")
    ip netns exec "$ns" "$bin" "${args[@]}" > "$dir/node.out" 2> "$dir/node.log" &
    echo "$! $ns" >> "$state/pids"
    if [ -z "$contact" ]; then
      for _ in $(seq 1 100); do
        contact=$(sed -n 's/.*"contact" *: *"\([^"]*\)".*/\1/p' "$dir/node.out" | head -n1)
        [ -n "$contact" ] && break
        sleep 0.1
      done
      [ -n "$contact" ] || die "node 1 did not start (see $dir/node.log)"
      echo "$contact" > "$state/bootstrap.contact"
    fi
  done
  trap - ERR
  say "up: $n nodes in namespaces $prefix""1..$prefix$n on $subnet.0/24 (bridge in $hub), mesh key $state/mesh.key"
  say "bootstrap peer: $contact"
  say "ask one: ip netns exec ${prefix}2 $bin status --data-dir $state/peer2"
  say "stop:    $0 down"
}

status() {
  need_root
  [ -e "$state/pids" ] || die "no mesh is up (no $state/pids)"
  while read -r pid ns; do
    local i=${ns#"$prefix"}
    if kill -0 "$pid" 2>/dev/null; then
      ip netns exec "$ns" "$bin" status --data-dir "$state/peer$i" --json || echo "{\"namespace\":\"$ns\",\"error\":\"no answer\"}"
    else
      echo "{\"namespace\":\"$ns\",\"error\":\"not running\"}"
    fi
  done < "$state/pids"
}

down() {
  need_root
  if [ -e "$state/pids" ]; then
    while read -r pid _; do kill -TERM "$pid" 2>/dev/null || true; done < "$state/pids"
    for _ in $(seq 1 50); do
      local alive=0
      while read -r pid _; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$state/pids"
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    while read -r pid _; do kill -KILL "$pid" 2>/dev/null || true; done < "$state/pids"
  fi
  if [ -e "$state/namespaces" ]; then
    while read -r ns; do ip netns del "$ns" 2>/dev/null || true; done < "$state/namespaces"
  fi
  rm -rf "$state"
  say "down: nodes stopped, namespaces and $state removed"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up N | status | down" >&2; exit 2 ;;
esac
