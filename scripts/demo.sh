#!/usr/bin/env bash
# The classic distributed-queue demo on loopback: one master, two workers
# squaring numbers, one producer mapping 1..20 through them. Everything
# started here is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
export QM_AUTHKEY=${QM_AUTHKEY:-demo-$RANDOM$RANDOM}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

"$BIN/qmaster" --addr 127.0.0.1:0 2>"$tmp/master.log" &
pids+=($!)
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/.*msg=listening.* addr=\([0-9.:]*\).*/\1/p' "$tmp/master.log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.05
done
if [ -z "$addr" ]; then echo "demo: the master did not start:"; cat "$tmp/master.log"; exit 1; fi
echo "== master listening on $addr"

for i in 1 2; do
  "$BIN/qworker" --server "$addr" --builtin square --concurrency 2 --name "demo-worker-$i" 2>"$tmp/worker$i.log" &
  pids+=($!)
done
echo "== two workers started; mapping 1..20 through them"
seq 1 20 | "$BIN/qmaster" map --server "$addr" | paste -sd' ' | sed 's/^/squares: /'
echo "== queues"
"$BIN/qmaster" inspect --server "$addr"
echo "== clients"
"$BIN/qmaster" clients --server "$addr"
echo "== stopping everything the demo started"
