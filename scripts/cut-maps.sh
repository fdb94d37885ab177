#!/usr/bin/env bash
# scripts/cut-maps.sh BINDIR [RUNS] [GAP]: maps stopped early on a three-node HA install. Three
# qmasters with --cluster-* on loopback (ports 5011-5013, 5091-5093, 6211-6213) and two `qworker
# --builtin square` given every address. A first map of 1,000 is timed (on a fresh cluster it took
# 5 s and failed to delete its reply queue before the fortieth session); then RUNS times (default
# 5): `seq 1 20000 | qmaster map | head -1`, which stops the map at its first result, a pause of
# GAP seconds (default 5), and a map of 1,000 timed. A map stopped so deletes its private reply queue: the script prints how long
# each map of 1,000 took and how many map-* queues are left at the end (0 expected: the results
# of a deleted reply queue go nowhere). It stops what it started and leaves the logs in a
# temporary directory.
set -u
bin=${1:?usage: cut-maps.sh BINDIR [RUNS] [GAP]}
runs=${2:-5}
gap=${3:-5}
d=$(mktemp -d)
export QM_AUTHKEY=abc
peers=127.0.0.1:6211,127.0.0.1:6212,127.0.0.1:6213
servers=127.0.0.1:5011,127.0.0.1:5012,127.0.0.1:5013
pids=()
cleanup() {
	kill -TERM "${pids[@]}" 2>/dev/null
	wait
}
trap cleanup EXIT
for i in 1 2 3; do
	"$bin/qmaster" --addr 127.0.0.1:501$i --http-addr 127.0.0.1:509$i --data-dir "$d/d$i" \
		--cluster-listen 127.0.0.1:621$i --cluster-peers $peers >"$d/m$i.log" 2>&1 &
	pids+=($!)
done
for i in 1 2 3; do
	for _ in $(seq 60); do
		curl -fs "http://127.0.0.1:509$i/readyz?current" >/dev/null 2>&1 && break
		sleep 1
	done
done
for w in 1 2; do
	"$bin/qworker" --server $servers --builtin square >"$d/w$w.log" 2>&1 &
	pids+=($!)
done
start=$(date +%s.%N)
seq 1 1000 | timeout 120 "$bin/qmaster" map --server $servers >/dev/null || echo "the first map failed (logs in $d)"
echo "the first map of 1000 took $(echo "$(date +%s.%N) - $start" | bc) s"
for r in $(seq "$runs"); do
	seq 1 20000 | timeout 120 "$bin/qmaster" map --server $servers 2>/dev/null | head -1 >/dev/null
	sleep "$gap"
	start=$(date +%s.%N)
	seq 1 1000 | timeout 120 "$bin/qmaster" map --server $servers >/dev/null
	echo "run $r: the next map of 1000 took $(echo "$(date +%s.%N) - $start" | bc) s"
done
sleep 3
left=$(timeout 10 "$bin/qmaster" queues --server $servers 2>/dev/null | grep -c '^map-')
echo "map-* queues left: $left (logs in $d)"
