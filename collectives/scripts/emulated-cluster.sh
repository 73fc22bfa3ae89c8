#!/usr/bin/env bash
# Emulated cluster for hetero-collective-bench: one network namespace per node,
# joined through a bridge in a "switch" namespace, every node link shaped with
# tc netem (default 1 Gbit/s and 0.25 ms each way on both ends, so 0.5 ms one
# way between nodes; nothing shaped inside a node). Addresses 198.18.0.0/24
# (RFC 2544 benchmarking range). Launches RANKS_PER_NODE ranks per node as
# processes with torchrun's variables, prints rank 0's table, and removes every
# namespace on exit, failure or interrupt. Needs root; touches nothing in the
# root namespace.
#
# usage: emulated-cluster.sh BENCH_BINARY [bench args...]
# env:   NODES (2), RANKS_PER_NODE (4), RATE (1gbit), DELAY (0.25ms)
set -euo pipefail

BIN=${1:?usage: emulated-cluster.sh BENCH_BINARY [bench args...]}
shift
NODES=${NODES:-2}
RPN=${RANKS_PER_NODE:-4}
RATE=${RATE:-1gbit}
DELAY=${DELAY:-0.25ms}
TAG="hc$$"
SW="${TAG}sw"
PIDS=()

if [ "$(id -u)" != 0 ]; then
    echo "skipped: creating network namespaces needs root" >&2
    exit 77
fi
if [ "$NODES" -gt 250 ]; then
    echo "at most 250 nodes" >&2
    exit 2
fi

cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for k in $(seq 0 $((NODES - 1))); do
        ip netns del "${TAG}n$k" 2>/dev/null || true
    done
    ip netns del "$SW" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# netem (rate + delay) when the kernel has it, else tbf (rate only).
SHAPED=""
shape() {
    if ip netns exec "$1" tc qdisc add dev "$2" root netem delay "$DELAY" rate "$RATE" limit 100000 2>/dev/null; then
        SHAPED="netem rate $RATE, delay $DELAY per end"
    else
        ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 128kb latency 400ms
        SHAPED="tbf rate $RATE (no delay: this kernel has no sch_netem)"
    fi
}

ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
for k in $(seq 0 $((NODES - 1))); do
    ns="${TAG}n$k"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # veth: eth0 in the node, p$k in the switch.
    ip -n "$ns" link add eth0 type veth peer name "p$k" netns "$SW"
    ip -n "$ns" addr add "198.18.0.$((k + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$SW" link set "p$k" master br0
    ip -n "$SW" link set "p$k" up
    shape "$ns" eth0
    shape "$SW" "p$k"
done
echo "# emulated cluster: $NODES nodes x $RPN ranks, node links: $SHAPED" >&2

WORLD=$((NODES * RPN))
PORT=29500
OUT=$(mktemp -d)
for k in $(seq 0 $((NODES - 1))); do
    for l in $(seq 0 $((RPN - 1))); do
        r=$((k * RPN + l))
        ip netns exec "${TAG}n$k" env RANK=$r WORLD_SIZE=$WORLD LOCAL_RANK=$l \
            LOCAL_WORLD_SIZE=$RPN MASTER_ADDR=198.18.0.1 MASTER_PORT=$PORT \
            "$BIN" --transport tcp "$@" >"$OUT/rank$r.log" 2>&1 &
        PIDS+=($!)
    done
done
status=0
for p in "${PIDS[@]}"; do
    wait "$p" || status=1
done
PIDS=()
cat "$OUT/rank0.log"
if [ "$status" != 0 ]; then
    for f in "$OUT"/rank*.log; do
        if [ -s "$f" ] && [ "$f" != "$OUT/rank0.log" ]; then
            echo "--- $f" >&2
            tail -5 "$f" >&2
        fi
    done
fi
rm -rf "$OUT"
exit $status
