#!/usr/bin/env bash
# scripts/restart-mem.sh BINDIR [N]: RSS and start-up of a --data-dir master holding N (default
# 1,000,000) ready 16-byte tasks: before a kill -9, once it listens again, and 5 s later. It
# uses 127.0.0.1:5999 and a temporary directory, and stops what it started.
set -u
bin=$1; n=${2:-1000000}
export QM_AUTHKEY=x
d=$(mktemp -d); log=$(mktemp)
$bin/qmaster --addr 127.0.0.1:5999 --data-dir $d --log-level warn & mp=$!
sleep 0.5
python3 -c "
for i in range($n): print('%016d' % i)" | $bin/qmaster put tasks --server 127.0.0.1:5999 --batch 1000 2>&1 | tail -1
echo "before kill: $(grep VmRSS /proc/$mp/status)"
kill -9 $mp; wait $mp 2>/dev/null
start=$(date +%s.%N)
$bin/qmaster --addr 127.0.0.1:5999 --data-dir $d --log-level info 2>"$log" & mp=$!
until grep -q listening "$log" 2>/dev/null; do sleep 0.05; done
cpu=$(awk '{print ($14+$15)/100}' /proc/$mp/stat)
echo "listening after $(python3 -c "import time;print(round(time.time()-$start,2))") s, cpu ${cpu} s: $(grep VmRSS /proc/$mp/status)"
sleep 5; echo "5 s later: $(grep VmRSS /proc/$mp/status) $(grep VmHWM /proc/$mp/status)"
grep -o "took=[^ ]*" "$log"
kill $mp; wait $mp 2>/dev/null; rm -rf "$d" "$log"
