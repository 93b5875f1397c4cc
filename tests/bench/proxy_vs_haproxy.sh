#!/usr/bin/env bash
# Proxy cost against haproxy: CPU-seconds of the proxy process per 100,000
# requests, requests/s and p99 latency, plus the direct-to-backend figures.
#
#   tests/bench/proxy_vs_haproxy.sh [BUILD_DIR]      (default: build)
#   ROUNDS=5 DURATION=10 CONNS=64 tests/bench/proxy_vs_haproxy.sh
#
# Backend: one testsrv (the harness's static build, else built here) on CPU 0.
# The slipway proxy (build/tests/helpers/proxy_run = proxy_main) and haproxy
# (Debian's, tests/bench/haproxy.cfg, nbthread 1) on CPU 1. wrk -t1 -cCONNS
# -dDURATIONs --latency on CPU 0. ROUNDS interleaved rounds of (direct, slipway,
# haproxy); CPU time from /proc/PID/stat (utime + stime) before and after each
# run. Prints every run, then median and range per target and the ratio
# slipway/haproxy of the median CPU cost. It prints figures; it asserts nothing.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
rounds=${ROUNDS:-5}
duration=${DURATION:-10}
conns=${CONNS:-64}
proxy=$build/tests/helpers/proxy_run
tmp=$(mktemp -d /tmp/slipway-bench-XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

for tool in wrk haproxy taskset curl python3; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
[ -x "$proxy" ] || { echo "bench: $proxy missing (make build/tests/helpers/proxy_run)" >&2; exit 1; }
testsrv=${SLIPWAY_TEST_TESTSRV:-$build/images/testsrv}
if [ ! -x "$testsrv" ]; then
	testsrv=$tmp/testsrv
	if command -v musl-gcc >/dev/null; then
		musl-gcc -static -O2 "$top/tests/images/testsrv.c" -o "$testsrv"
	else
		cc -D_GNU_SOURCE -O2 "$top/tests/images/testsrv.c" -o "$testsrv"
	fi
fi
ncpu=$(nproc)
[ "$ncpu" -ge 2 ] || echo "bench: only $ncpu CPU: pinning is meaningless, figures are not comparable" >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# backend
be_port=$(free_port)
PORT=$be_port RELEASE=bench taskset -c 0 "$testsrv" >"$tmp/backend.log" 2>&1 &
pids+=($!)

# slipway proxy
sp_port=$(free_port)
cat >"$tmp/agent.conf" <<CONF
agent.state_dir = $tmp
proxy.bind = 127.0.0.1
log.level = warn
CONF
taskset -c 1 "$proxy" proxy --config "$tmp/agent.conf" >"$tmp/proxy.log" 2>&1 &
sp_pid=$!
pids+=($sp_pid)

# haproxy
hp_port=$(free_port)
sed -e "s/@LISTEN_PORT@/$hp_port/" -e "s/@BACKEND_PORT@/$be_port/" \
	"$top/tests/bench/haproxy.cfg" >"$tmp/haproxy.cfg"
taskset -c 1 haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
hp_pid=$!
pids+=($hp_pid)

for _ in $(seq 100); do
	[ -S "$tmp/proxy.sock" ] && curl -sf "http://127.0.0.1:$be_port/health" >/dev/null && break
	sleep 0.05
done
curl -sf --unix-socket "$tmp/proxy.sock" -X PUT http://proxy/v1/routes/bench/web \
	-d "{\"generation\":1,\"release\":\"bench\",\"listen\":$sp_port,\"hosts\":[],
	     \"backends\":[{\"id\":\"b1\",\"address\":\"127.0.0.1:$be_port\"}]}" >/dev/null
for port in $be_port $sp_port $hp_port; do
	for _ in $(seq 100); do
		curl -sf "http://127.0.0.1:$port/" >/dev/null && break
		sleep 0.05
	done
	curl -sf "http://127.0.0.1:$port/" | grep -q "hello from bench" ||
		{ echo "bench: nothing answers on port $port" >&2; cat "$tmp"/*.log >&2; exit 1; }
done

url_of() { case $1 in direct) echo "http://127.0.0.1:$be_port/" ;;
	slipway) echo "http://127.0.0.1:$sp_port/" ;; haproxy) echo "http://127.0.0.1:$hp_port/" ;; esac; }
pid_of() { case $1 in direct) echo "" ;; slipway) echo $sp_pid ;; haproxy) echo $hp_pid ;; esac; }

# p99 from wrk's latency distribution, in ms
p99_ms() { awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
	if (u == "us") v /= 1000; else if (u == "s") v *= 1000; print v }'; }

echo "# warm-up"
for t in direct slipway haproxy; do taskset -c 0 wrk -t1 -c"$conns" -d2s "$(url_of $t)" >/dev/null; done

results=$tmp/results
: >"$results"
printf '%-6s %-8s %10s %11s %9s %14s %8s\n' round target requests "req/s" "p99_ms" "cpu_s/100k" errors
for r in $(seq "$rounds"); do
	for t in direct slipway haproxy; do
		pid=$(pid_of $t)
		c0=0
		[ -z "$pid" ] || c0=$(cpu_ticks "$pid")
		out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${duration}s" --latency "$(url_of $t)")
		c1=0
		[ -z "$pid" ] || c1=$(cpu_ticks "$pid")
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
		p99=$(p99_ms <<<"$out")
		errs=$(awk '/Socket errors/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
			/Non-2xx/ { e += $5 } END { print e + 0 }' <<<"$out")
		cpu=$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="$n" \
			'BEGIN { if (n > 0) printf "%.3f", d / hz / n * 100000; else print "nan" }')
		[ -n "$pid" ] || cpu="-"
		printf '%-6s %-8s %10s %11s %9s %14s %8s\n' "$r" "$t" "$n" "$rps" "$p99" "$cpu" "$errs"
		echo "$t $rps $p99 $cpu" >>"$results"
	done
done

echo
echo "# median [min .. max] over $rounds rounds; wrk -t1 -c$conns -d${duration}s; proxy CPU 1, wrk + backend CPU 0"
stat_of() { # TARGET COLUMN -> "median min max"
	awk -v t="$1" -v c="$2" '$1 == t && $c != "-" { print $c }' "$results" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - -"; exit }
			m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%.3f %.3f %.3f\n", m, v[1], v[NR] }'
}
printf '%-8s %-30s %-26s %-26s\n' target "req/s" "p99 ms" "cpu_s per 100k requests"
for t in direct slipway haproxy; do
	read -r rm rl rh <<<"$(stat_of $t 2)"
	read -r pm pl ph <<<"$(stat_of $t 3)"
	read -r cm cl ch <<<"$(stat_of $t 4)"
	printf '%-8s %-30s %-26s %-26s\n' "$t" "$rm [$rl .. $rh]" "$pm [$pl .. $ph]" "$cm [$cl .. $ch]"
done
read -r s_cpu _ _ <<<"$(stat_of slipway 4)"
read -r h_cpu _ _ <<<"$(stat_of haproxy 4)"
awk -v s="$s_cpu" -v h="$h_cpu" 'BEGIN { printf "ratio slipway/haproxy (median CPU per request): %.3f (target <= 1.1)\n", s / h }'
