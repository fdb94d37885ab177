#!/bin/sh
# A worker in shell: qworker --stdio ... -- sh square.sh
# One task a line on stdin (JSON), one result a line on stdout.
while read -r x; do
	case $x in
	'' | *[!0-9-]*) echo "!error not an integer: $x" ;;
	*) echo $((x * x)) ;;
	esac
done
