#!/usr/bin/env bash
# scripts/rolling-restart.sh BINDIR [N]: a rolling restart of a three-node HA install during a
# map, as the README says to do one. Three qmasters with --cluster-* on loopback (ports 5001-5003,
# 5081-5083, 6201-6203, and NATS clients on 4221-4223 for inspection), three `qworker --builtin
# square` given every address, and `seq 1 N | qmaster map` (N default 300,000) given every address.
# Four seconds in, each node in turn gets SIGTERM, is started again, and is waited for until
# /readyz?current. It prints whether map printed every square in order, the longest pause of its
# output (in whole seconds), and the warnings of every process; it stops what it started and
# leaves the logs in a temporary directory. QMARGS and QWARGS add flags to every qmaster and
# qworker (--log-level debug, say); SIGNAL=KILL stops each node with SIGKILL instead, as a
# crash would.
set -u
bin=${1:?usage: rolling-restart.sh BINDIR [N]}
n=${2:-300000}
d=$(mktemp -d)
export QM_AUTHKEY=abc
peers=127.0.0.1:6201,127.0.0.1:6202,127.0.0.1:6203
servers=127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003
pids=()
startnode() {
	local i=$1
	# shellcheck disable=SC2086 # QMARGS holds several flags
	"$bin/qmaster" --addr 127.0.0.1:500$i --http-addr 127.0.0.1:508$i --data-dir "$d/d$i" \
		--cluster-listen 127.0.0.1:620$i --nats-listen 127.0.0.1:422$i --cluster-peers $peers \
		${QMARGS:-} >>"$d/m$i.log" 2>&1 &
	echo $! >"$d/m$i.pid"
}
current() { until curl -fs "http://127.0.0.1:508$1/readyz?current" >/dev/null 2>&1; do sleep 0.5; done; }
stopnode() {
	local p
	p=$(cat "$d/m$1.pid")
	kill -"${2:-TERM}" "$p" 2>/dev/null
	while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
}
cleanup() {
	kill -TERM "${pids[@]}" 2>/dev/null
	for i in 1 2 3; do stopnode $i; done
}
trap cleanup EXIT

for i in 1 2 3; do startnode $i; done
for i in 1 2 3; do current $i; done
for w in 1 2 3; do
	# shellcheck disable=SC2086
	"$bin/qworker" --server $servers --builtin square --name w$w ${QWARGS:-} >"$d/w$w.log" 2>&1 &
	pids+=($!)
done
# Each output line is stamped with the second it came, for the pauses: by
# perl, unbuffered, as awk (mawk) reads a pipe in 4 KiB blocks and would
# stamp a block's lines with the time it filled.
(seq 1 "$n" | "$bin/qmaster" map --server $servers --timeout 600s 2>"$d/map.err" |
	perl -ne 'BEGIN { $| = 1 } print time, " ", $_' >"$d/out") &
mapper=$!
sleep 4
for i in 1 2 3; do
	echo "$(date +%T) $(wc -l <"$d/out") results out: SIG${SIGNAL:-TERM} node $i"
	stopnode $i "${SIGNAL:-TERM}"
	sleep 1
	startnode $i
	current $i
	echo "$(date +%T) node $i current again"
	sleep 3
done
wait $mapper
awk -v n="$n" '$2 != NR*NR { bad++ } END { print (bad == 0 && NR == n) ? "map: every square, in order" : "map: WRONG, " NR " lines, " bad+0 " out of place" }' "$d/out"
awk 'NR > 1 && $1-p > 2 { print "map printed nothing for " $1-p " s before result " NR " (" strftime("%T", $1) ")" } { p = $1 }' "$d/out"
echo "warnings and errors:"
grep -h -E 'level=(WARN|ERROR)' "$d"/*.log "$d/map.err" | sed -E 's/^time=[^ ]+ //' | cut -c1-200 | sort | uniq -c | sort -rn | head -20
echo "logs in $d"
