#!/usr/bin/env bash
# Scale of the SQS queue backend: N simulated agents (tests/helpers/sqs_swarm),
# each with its own queue in tests/fakes/sqs.py, long-polling it with
# ReceiveMessage; releases promoted through the API of a coordinator with
# queue.backend = sqs. Prints how long each release took to reach all of them
# (promotion -> every agent has received its job message) and the
# coordinator's private memory (Private_Clean + Private_Dirty of
# /proc/PID/smaps_rollup).
#
#   tests/bench/sqs_scale.sh [BUILD_DIR] [AGENTS] [ROUNDS]
#
# A benchmark prints figures, it does not judge them: the TAP lines check only
# that the run itself worked (the fake and the coordinator started, every
# agent registered and got its queue, took every release and acknowledged
# it). The figures are printed next to the embedded backend's targets
# (issue 5: within 2 s, <= 64 MB) for comparison.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${SLIPWAY_BUILD:-$top/build}}
case $build in /*) ;; *) build=$top/$build ;; esac
agents=${2:-${SLIPWAY_SCALE_AGENTS:-1000}}
rounds=${3:-${SLIPWAY_SCALE_ROUNDS:-3}}
. "$top/tests/lib/tap.sh"

tap_plan 3
tmp=$(mktemp -d /tmp/slipway-sqs-scale-XXXXXX)
pid=""
fake=""
cleanup() {
	[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null
	[ -z "$pid" ] || wait "$pid" 2>/dev/null
	[ -z "$fake" ] || kill -TERM "$fake" 2>/dev/null
	[ -z "$fake" ] || wait "$fake" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null
export AWS_ACCESS_KEY_ID=AKIDSQSSCALEBENCH AWS_SECRET_ACCESS_KEY=sqs-scale-bench-secret
export AWS_EC2_METADATA_DISABLED=true AWS_SHARED_CREDENTIALS_FILE=$tmp/none
unset AWS_SESSION_TOKEN AWS_PROFILE
region=us-east-1
mkfifo "$tmp/fake.port"
python3 "$top/tests/fakes/sqs.py" --access-key "$AWS_ACCESS_KEY_ID" \
	--secret-key "$AWS_SECRET_ACCESS_KEY" --region "$region" >"$tmp/fake.port" \
	2>"$tmp/fake.log" &
fake=$!
read -r sqs_port <"$tmp/fake.port"
if [ -z "$sqs_port" ]; then
	tap_fail "the fake SQS starts" "$(tail -20 "$tmp/fake.log")"
	exit 1
fi
tap_ok "the fake SQS starts (pid $fake, port $sqs_port)"
boot=sqs-scale-bootstrap-token-0123456789
cat >"$tmp/c.conf" <<CONF
data.dir = $tmp/data
server.listen = 127.0.0.1:0
agents.bootstrap_token = $boot
docker.socket = $tmp/no-docker.sock
log.level = warn
queue.backend = sqs
queue.sqs_region = $region
queue.sqs_endpoint = http://127.0.0.1:$sqs_port
queue.sqs_prefix = slipway-bench-
CONF
coord=$build/slipway-coordinator
swarm=$build/tests/helpers/sqs_swarm
key=$("$coord" --config "$tmp/c.conf" apikey create --name bench --role admin 2>/dev/null | tail -1)
SLIPWAY_COORDINATOR_LOG_LEVEL=info "$coord" --config "$tmp/c.conf" >"$tmp/log" 2>&1 &
pid=$!
port=""
for _ in $(seq 200); do
	port=$(sed -nE 's/.*coordinator\.started .* port=([0-9]+).*/\1/p' "$tmp/log")
	[ -n "$port" ] && break
	sleep 0.05
done
if [ -z "$port" ]; then
	tap_fail "coordinator starts with queue.backend = sqs" "$(tail -20 "$tmp/log")"
	exit 1
fi
tap_ok "coordinator starts with queue.backend = sqs (pid $pid, port $port)"
curl -sf -X POST -H "Authorization: Bearer $key" -d '{"name":"web"}' \
	"http://127.0.0.1:$port/v1/apps" >/dev/null
base_kb=$(awk '/^Private_(Clean|Dirty)/ {s += $2} END {print s}' "/proc/$pid/smaps_rollup")
"$swarm" --port "$port" --bootstrap "$boot" --key "$key" --agents "$agents" --pid "$pid" \
	--rounds "$rounds" --region "$region" --endpoint "http://127.0.0.1:$sqs_port" \
	>"$tmp/swarm.out" 2>&1
rc=$?
sed 's/^/# /' "$tmp/swarm.out"
echo "# coordinator private memory at start: $base_kb kB"
stats=$(curl -sf "http://127.0.0.1:$sqs_port/_fake/stats")
echo "# fake SQS requests: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$stats" 2>/dev/null)"
echo "# fake SQS queues: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["queues"])' "$stats" 2>/dev/null)"
result=$(sed -n 's/^RESULT //p' "$tmp/swarm.out")
# The coordinator's share of the last round: promotion -> the last job message
# accepted by the fake (its own clock; the fake, one Python process, is the
# slower side at this scale).
fanout_ms=$(curl -sf "http://127.0.0.1:$sqs_port/_fake/calls?action=SendMessageBatch" |
	python3 -c '
import json, sys
r = json.loads(sys.argv[1]); c = json.load(sys.stdin)["calls"]
t = [x["t"] for x in c if x["t"] >= r["promote_wall_s"]]
print("%.0f" % ((max(t) - r["promote_wall_s"]) * 1000) if t else "?")' "$result" 2>/dev/null ||
	echo "?")
echo "# last round: every job message was in SQS $fanout_ms ms after the promotion"
tap_check "$agents agents registered with a queue each, received every release through SQS and acked ($rounds rounds)" \
	bash -c "[ $rc -eq 0 ] && [ -n '$result' ]"
get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$result" 2>/dev/null || echo "?"; }
max_ms=$(get max_ms)
mem_reg=$(get private_kb_registered)
mem_after=$(get private_kb_after)
verdict() { python3 -c "import sys; print('met' if $1 else 'not met')" 2>/dev/null || echo "?"; }
printf '# %-44s %12s   %s\n' figure measured "target (embedded backend, issue 5)"
printf '# %-44s %12s   %s (%s)\n' "release reaches all $agents agents (max)" "${max_ms} ms" \
	"<= 2000 ms" "$(verdict "$max_ms <= 2000")"
printf '# %-44s %12s   %s (%s)\n' "private memory, $agents agents registered" "${mem_reg} kB" \
	"<= 65536 kB" "$(verdict "$mem_reg <= 65536")"
printf '# %-44s %12s   %s (%s)\n' "private memory after the rollouts" "${mem_after} kB" \
	"<= 65536 kB" "$(verdict "$mem_after <= 65536")"
tap_done
