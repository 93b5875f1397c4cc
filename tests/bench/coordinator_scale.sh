#!/usr/bin/env bash
# Scale of the coordinator: N agents long-polling at once (tests/helpers/agent_swarm),
# a release promoted through the API must reach all of them within 2 s, and the
# coordinator's private memory (Private_Clean + Private_Dirty of
# /proc/PID/smaps_rollup) must stay <= 64 MB. TAP output, figures as comments.
#
#   tests/bench/coordinator_scale.sh [BUILD_DIR] [AGENTS] [ROUNDS]
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${SLIPWAY_BUILD:-$top/build}}
case $build in /*) ;; *) build=$top/$build ;; esac
agents=${2:-${SLIPWAY_SCALE_AGENTS:-1000}}
rounds=${3:-${SLIPWAY_SCALE_ROUNDS:-3}}
. "$top/tests/lib/tap.sh"

tap_plan 5
tmp=$(mktemp -d /tmp/slipway-scale-XXXXXX)
pid=""
cleanup() {
	[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null
	[ -z "$pid" ] || wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
boot=scale-bootstrap-token-0123456789
cat >"$tmp/c.conf" <<CONF
data.dir = $tmp/data
server.listen = 127.0.0.1:0
agents.bootstrap_token = $boot
docker.socket = $tmp/no-docker.sock
log.level = warn
CONF
coord=$build/slipway-coordinator
swarm=$build/tests/helpers/agent_swarm
key=$("$coord" --config "$tmp/c.conf" apikey create --name bench --role admin 2>/dev/null | tail -1)
# log.level warn: the start line is info, so ask for it explicitly.
SLIPWAY_COORDINATOR_LOG_LEVEL=info "$coord" --config "$tmp/c.conf" >"$tmp/log" 2>&1 &
pid=$!
port=""
for _ in $(seq 200); do
	port=$(sed -nE 's/.*coordinator\.started .* port=([0-9]+).*/\1/p' "$tmp/log")
	[ -n "$port" ] && break
	sleep 0.05
done
if [ -z "$port" ]; then
	tap_fail "coordinator starts" "$(tail -20 "$tmp/log")"
	exit 1
fi
tap_ok "coordinator starts (pid $pid, port $port)"
curl -sf -X POST -H "Authorization: Bearer $key" -d '{"name":"web"}' \
	"http://127.0.0.1:$port/v1/apps" >/dev/null
base_kb=$(awk '/^Private_(Clean|Dirty)/ {s += $2} END {print s}' "/proc/$pid/smaps_rollup")
"$swarm" --port "$port" --bootstrap "$boot" --key "$key" --agents "$agents" --pid "$pid" \
	--rounds "$rounds" >"$tmp/swarm.out" 2>&1
rc=$?
sed 's/^/# /' "$tmp/swarm.out"
echo "# coordinator private memory at start: $base_kb kB"
result=$(sed -n 's/^RESULT //p' "$tmp/swarm.out")
tap_check "$agents agents registered, polled, took every release and acked ($rounds rounds)" \
	bash -c "[ $rc -eq 0 ] && [ -n '$result' ]"
get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$result" 2>/dev/null || echo 999999; }
max_ms=$(get max_ms)
mem_polls=$(get private_kb_polls)
mem_after=$(get private_kb_after)
tap_check "a promoted release reached all $agents waiting agents within 2 s (max ${max_ms} ms)" \
	python3 -c "import sys; sys.exit(0 if $max_ms <= 2000 else 1)"
tap_check "private memory holding $agents polls <= 64 MB (${mem_polls} kB)" \
	bash -c "[ $mem_polls -gt 0 ] && [ $mem_polls -le 65536 ]"
tap_check "private memory after the rollouts <= 64 MB (${mem_after} kB)" \
	bash -c "[ $mem_after -gt 0 ] && [ $mem_after -le 65536 ]"
tap_done
