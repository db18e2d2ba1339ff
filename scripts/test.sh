#!/usr/bin/env bash
# make test: every package's tests under the race detector.
#
# The scenarios package is the long pole, and its tests mostly wait
# (processes, Docker, brokers, timers), so its test binary is built once and
# run as SCENARIO_SHARDS (3) shards at once, its tests dealt in turn in their
# order, beside the other packages' tests. The shards share one Docker Engine:
# tests keep to their own names (testenv: run-unique gateway ids,
# --resource-prefix, per-process images).
#
# Each shard runs verbose into a log of its own (TEST_LOGS, a temporary
# directory unless set); the terminal gets its results, and the end of the
# output is a summary a CI page's tail shows whole: the slowest tests, and
# for a failure or a timeout the failing (or still running) tests' own output,
# and for a timeout where the tests still running wait.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
bin=$(mktemp -d)
logs=${TEST_LOGS:-$bin/logs}
mkdir -p "$logs"
trap 'rm -rf "$bin"' EXIT
start=$SECONDS

# Built first, at once: the scenarios' test binary, and the programs the
# tests run (testenv.PrebuiltEnv), which every test process would otherwise
# build for itself, inside its timeout, on CI's cold cache.
export FLEET_TEST_BIN=$bin/tools
"$GO" test -race -c -o "$bin/scenarios.test" ./scenarios/ &
scen=$!
CGO_ENABLED=0 "$GO" build -ldflags '-s -w' -o "$FLEET_TEST_BIN/" ./agent ./agent/cmd/fleet-agent-ecr ./cloud-sim \
	./cloud-sim/registry/testimage/testapp github.com/nats-io/nats-server/v2 || exit 1
wait "$scen" || exit 1
echo "make test: built in $((SECONDS - start)) s"
mapfile -t names < <(cd scenarios && "$bin/scenarios.test" -test.list '.*' | grep '^Test')
shards=${SCENARIO_SHARDS:-3}

"$GO" test -race -timeout 10m $("$GO" list ./... | grep -v '/scenarios$') 2>&1 | tee "$logs/packages.log" &
pids=($!)
# The copy of paho.golang Fleet Agent patches is a module of its own.
(cd third_party/paho.golang && "$GO" test -race ./packets/) 2>&1 | tee "$logs/paho.log" &
pids+=($!)
for ((k = 1; k <= shards; k++)); do
	mine=$(printf '%s\n' "${names[@]}" | awk -v n="$shards" -v k="$k" '(NR - 1) % n == k - 1' | paste -sd'|')
	[ -n "$mine" ] || continue
	(
		cd scenarios
		"$bin/scenarios.test" -test.v -test.timeout 15m -test.run "^(${mine})\$" >"$logs/scenarios-$k.log" 2>&1
		rc=$?
		grep -E '^(--- FAIL|FAIL|ok|PASS$|panic: )' "$logs/scenarios-$k.log" | sed "s/^/[scenarios $k] /"
		exit "$rc"
	) &
	pids+=($!)
done

rc=0
for p in "${pids[@]}"; do
	wait "$p" || rc=1
done

echo
echo "== the slowest scenarios (of $((SECONDS - start)) s in all)"
cat "$logs"/scenarios-*.log | grep -E '^--- (PASS|FAIL|SKIP): ' | sed -E 's/^--- [A-Z]+: ([^ ]+) \(([0-9.]+)s\)$/\2 \1/' | sort -rn | head -15
if [ "$rc" -ne 0 ]; then
	for f in "$logs"/scenarios-*.log; do
		# A failed test's output, and a test still running at a timeout
		# (its buffer at the end of the log), each from its "=== RUN".
		awk -v shard="$(basename "$f" .log)" '
			dump && /^goroutine / { exit }
			/^=== RUN   [^\/]+$/ { buf = ""; name = $3 }
			{ buf = buf $0 "\n" }
			/^--- FAIL: / { printf "\n== %s: %s\n%s", shard, name, buf; buf = ""; name = "" }
			/^--- (PASS|SKIP): / { buf = ""; name = "" }
			/^panic: / { dump = 1 }
			END { if (name != "") printf "\n== %s: %s, still running at the end\n%s", shard, name, buf }
		' "$f" | tail -n 200
	done
	echo
	echo "== failures"
	grep -hE '^(--- FAIL|FAIL|panic: )' "$logs"/*.log
	# Last, what each failed test said itself (scripts/said.awk).
	awk -f scripts/said.awk "$logs"/scenarios-*.log
	grep -hA3 'running tests:' "$logs"/*.log
	# And where a test still running at a timeout waits (scripts/stuck.awk).
	for f in "$logs"/*.log; do awk -f scripts/stuck.awk "$f"; done
fi
if [ "$rc" -eq 0 ]; then echo "make test: all passed"; else echo "make test: FAILED (logs in $logs, removed on exit unless TEST_LOGS is set)"; fi
exit "$rc"
