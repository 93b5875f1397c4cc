#!/usr/bin/env bash
# Webhook latency: a real slipway-coordinator takes GitLab push deliveries at a
# fixed rate (wrk + tests/bench/webhook_latency.lua), each with its own
# Idempotency-Key, each recorded durably (one group commit per batch) before its
# answer. The app deploys another branch, so every delivery is recorded as
# 'ignored' and nothing builds.
#
#   tests/bench/webhook_latency.sh [BUILD_DIR] [RATE] [SECONDS]
# (SLIPWAY_WEBHOOK_LOG_LEVEL sets the coordinator's log.level, default info:
# one log line per delivery, as in production.)
#
# A benchmark prints figures, it does not judge timings: the rate and the
# latency percentiles are printed next to their targets (issue 5: p99 <= 5 ms
# at 1,000 deliveries/s), whatever they are. The TAP lines check only that the
# run itself worked: the coordinator started, every delivery was answered 2xx,
# and every answered delivery is recorded in the store (nothing built). The
# exit status is 0 unless one of those broke.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${SLIPWAY_BUILD:-$top/build}}
case $build in /*) ;; *) build=$top/$build ;; esac
rate=${2:-${SLIPWAY_WEBHOOK_RATE:-1000}}
seconds=${3:-${SLIPWAY_WEBHOOK_SECONDS:-30}}
threads=2
conns=${SLIPWAY_WEBHOOK_CONNECTIONS:-32}
. "$top/tests/lib/tap.sh"

tap_plan 3
tmp=$(mktemp -d /tmp/slipway-webhook-bench-XXXXXX)
pid=""
cleanup() {
	[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null
	[ -z "$pid" ] || wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
fixtures=${SLIPWAY_FIXTURES:-$top/../shared/fixtures}
body=$fixtures/gitlab/push_hook.json
master=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
hook=hk_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
cat >"$tmp/c.conf" <<CONF
data.dir = $tmp/data
server.listen = 127.0.0.1:$port
agents.bootstrap_token = webhook-bench-bootstrap-token
secrets.master_key = $master
docker.socket = $tmp/no-docker.sock
log.level = ${SLIPWAY_WEBHOOK_LOG_LEVEL:-info}
CONF
coord=$build/slipway-coordinator
key=$("$coord" --config "$tmp/c.conf" apikey create --name bench --role admin 2>/dev/null | tail -1)
"$coord" --config "$tmp/c.conf" >"$tmp/log" 2>&1 &
pid=$!
up=""
for _ in $(seq 200); do
	curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && up=1 && break
	sleep 0.05
done
if [ -z "$up" ]; then
	tap_fail "coordinator starts" "$(tail -20 "$tmp/log")"
	exit 1
fi
# The push fixture is for master; the app deploys another branch.
created=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $key" \
	-d '{"name":"bench","branch":"no-builds-here"}' "http://127.0.0.1:$port/v1/apps")
"$build/tests/helpers/webhook_hook" --db "$tmp/data/coordinator.db" --master-key "$master" \
	--app bench --hook "$hook" --token "$token"
hooked=$?
tap_check "coordinator starts (pid $pid, port $port), app created ($created), hook set" \
	bash -c "[ '$created' = 201 ] && [ $hooked -eq 0 ]"

url=http://127.0.0.1:$port/hooks/gitlab/$hook
# A short warm-up, then the measured run.
wrk -t1 -c1 -d1s -s "$top/tests/bench/webhook_latency.lua" "$url" -- 50 "$body" "$token" \
	warmup >/dev/null 2>&1
per_thread=$(python3 -c "print($rate / $threads)")
echo "# wrk -t$threads -c$conns -d${seconds}s --timeout 5s -s tests/bench/webhook_latency.lua" \
	"$url -- $per_thread push_hook.json TOKEN RUN"
wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 5s \
	-s "$top/tests/bench/webhook_latency.lua" "$url" -- "$per_thread" "$body" "$token" run \
	>"$tmp/wrk.out" 2>&1
sed 's/^/# /' "$tmp/wrk.out"
# Let the last commits land, then stop the coordinator (its store closes cleanly).
kill -TERM "$pid"
wait "$pid"
pid=""
result=$(sed -n 's/^RESULT //p' "$tmp/wrk.out")
val() { echo "$result" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
requests=$(val requests)
ok=$(val ok)
p50=$(val p50_us)
p99=$(val p99_us)
max=$(val max_us)
secs=$(val seconds)
achieved=$(python3 -c "print(round(${requests:-0} / ${secs:-1}))")
recorded=$(sqlite3 "$tmp/data/coordinator.db" \
	"SELECT count(*) FROM deliveries WHERE app = 'bench' AND dedup_key LIKE 'bench:idem:run-%'")
ignored=$(sqlite3 "$tmp/data/coordinator.db" \
	"SELECT count(*) FROM deliveries WHERE app = 'bench' AND status = 'ignored'")
builds=$(sqlite3 "$tmp/data/coordinator.db" "SELECT count(*) FROM builds")
echo "# offered ${rate}/s for ${seconds}s: $requests answered, $ok 2xx"
echo "# deliveries recorded: $recorded (ignored: $ignored, builds: $builds)"
# Figures next to their targets (issue 5); met or not, they are not a failure.
verdict() { python3 -c "import sys; print('met' if $1 else 'not met')" 2>/dev/null || echo "?"; }
printf '# %-22s %14s   %s\n' figure measured target
printf '# %-22s %14s   %s (%s)\n' "delivery rate" "${achieved}/s" ">= ${rate}/s offered" \
	"$(verdict "${achieved:-0} >= ${rate} * 0.95")"
printf '# %-22s %14s   %s\n' "latency p50" "${p50:-?} us" "-"
printf '# %-22s %14s   %s (%s)\n' "latency p99" "${p99:-?} us" "<= 5000 us" \
	"$(verdict "${p99:-999999999} <= 5000")"
printf '# %-22s %14s   %s\n' "latency max" "${max:-?} us" "-"
tap_check "every delivery answered 2xx ($ok of $requests)" \
	bash -c "[ -n '$requests' ] && [ '$requests' -gt 0 ] && [ '$ok' = '$requests' ]"
# wrk stops with requests in flight: they are recorded but not counted as answered.
tap_check "deliveries recorded ($recorded) = 2xx answers ($ok) + in flight at the end (<= $conns), no build" \
	bash -c "[ -n '$ok' ] && [ $recorded -ge $ok ] && [ $((recorded - ok)) -le $conns ] &&
		[ $builds -eq 0 ]"
tap_done
