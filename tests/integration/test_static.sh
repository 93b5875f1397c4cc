#!/usr/bin/env bash
# The static agent that `make static` builds (cross/, docs/static-build.md).
# This test builds nothing (the libraries take minutes): an architecture whose
# build/cross/ARCH/slipway-agent is missing is skipped; when both are missing
# under CI=true (.ci/run builds them first) that is a failure.
#
#   x86_64:  `file` says statically linked; at most 1,500,000 bytes; selftest;
#            over HTTPS to a coordinator (tests/fakes/coordinator.py behind
#            tests/fakes/tls_front.py, with a test CA) it registers when
#            coordinator.ca_file names the CA, registers when the CA sits at
#            the system bundle's path (a private mount namespace; root only),
#            and refuses the server when nothing it trusts signed it.
#   aarch64: `file` says statically linked, ARM aarch64; selftest under
#            qemu-aarch64-static (binfmt_misc may be absent: qemu is called).
# KEEP_TMP=1 keeps the temp dir (certificates, agent and fake logs).
set -u
top=${SLIPWAY_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${SLIPWAY_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
# shellcheck source=../lib/tap.sh
. "$top/tests/lib/tap.sh"

BUDGET=1500000
x86=$build/cross/x86_64/slipway-agent
arm=$build/cross/aarch64/slipway-agent
SYSTEM_BUNDLE=/etc/ssl/certs/ca-certificates.crt # the first path http_client tries
TOKEN=static-test-token

plan=0
[ -f "$x86" ] && plan=$((plan + 6))
[ -f "$arm" ] && plan=$((plan + 2))
if [ $plan -eq 0 ] && [ "${CI:-}" = "true" ]; then
	# .ci/run builds both before the tests: missing here means that broke.
	echo "1..1"
	echo "not ok 1 - no static agent in $build/cross (CI=true: .ci/run builds them first)"
	exit 1
fi
if [ $plan -eq 0 ]; then
	echo "1..0 # SKIP no static agent in $build/cross (make static [ARCH=aarch64] builds it)"
	exit 0
fi
tap_plan $plan

tmp=$(mktemp -d /tmp/slipway-static-XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds.
wait_for() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt $deadline ] || return 1
		sleep 0.05
	done
}
has_line() { [ -s "$1" ] && [ "$(wc -l <"$1")" -ge 1 ]; }

check_file() { # NAME BINARY PATTERN
	local kind
	kind=$(file -b "$2")
	case $kind in
	*"statically linked"*) if [[ $kind == *$3* ]]; then tap_ok "$1"; return; fi ;;
	esac
	tap_fail "$1" "file: $kind"
}

# ---- HTTPS to a fake coordinator through a TLS front ----

tls_setup() {
	local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
	openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=slipway static test CA" \
		-keyout "$tmp/ca.key" -out "$tmp/ca.pem" &&
		openssl req "${ec[@]}" -subj "/CN=localhost" -keyout "$tmp/srv.key" -out "$tmp/srv.csr" &&
		printf 'subjectAltName=DNS:localhost\n' >"$tmp/srv.ext" &&
		openssl x509 -req -in "$tmp/srv.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
			-CAcreateserial -days 2 -extfile "$tmp/srv.ext" -out "$tmp/srv.pem" || return 1
	python3 "$top/tests/fakes/coordinator.py" --bootstrap-token "$TOKEN" \
		>"$tmp/coord.out" 2>"$tmp/coord.log" &
	pids+=($!)
	wait_for 10 has_line "$tmp/coord.out" || return 1
	coord_port=$(head -1 "$tmp/coord.out")
	python3 "$top/tests/fakes/tls_front.py" --cert "$tmp/srv.pem" --key "$tmp/srv.key" \
		--to "$coord_port" >"$tmp/front.out" 2>"$tmp/front.log" &
	pids+=($!)
	wait_for 10 has_line "$tmp/front.out" || return 1
	front_url=https://localhost:$(head -1 "$tmp/front.out")
}

# start_agent NAME CA_FILE|"" [WRAPPER...]: the static agent (and its proxy,
# started here so its pid is known) with its own state dir; no Docker engine.
start_agent() {
	local name=$1 ca=${2:-} d=$tmp/$1
	shift 2
	mkdir -p "$d/state"
	chmod 700 "$d/state"
	cat >"$d/agent.conf" <<CONF
coordinator.url = "$front_url"
coordinator.bootstrap_token = "$TOKEN"
coordinator.retry_base = "100ms"
coordinator.retry_cap = "500ms"
agent.instance_id = "static-$name-$$"
agent.state_dir = "$d/state"
docker.socket = "$d/no-docker.sock"
proxy.spawn = "false"
proxy.bind = "127.0.0.1"
logs.enabled = "false"
metrics.enabled = "false"
${ca:+coordinator.ca_file = \"$ca\"}
CONF
	"$x86" proxy --config "$d/agent.conf" >"$d/proxy.log" 2>&1 &
	pids+=($!)
	"$@" "$x86" --config "$d/agent.conf" >"$d/agent.log" 2>&1 &
	pids+=($!)
}

registered() {
	curl -fsS "http://127.0.0.1:$coord_port/_fake/agents" 2>/dev/null | grep -q "static-$1-$$"
}
logged() { grep -q "$2" "$tmp/$1/agent.log" 2>/dev/null; }

# Runs the agent with the test CA mounted over the system bundle, in a mount
# namespace of its own (the rest of the machine sees nothing).
# shellcheck disable=SC2016 # expanded by that sh
ns_wrap=(unshare --mount --propagation private sh -c
	'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$tmp/ca.pem" "$SYSTEM_BUNDLE")

# ---- x86_64 ----

if [ -f "$x86" ]; then
	check_file "x86_64: file says statically linked" "$x86" "x86-64"
	size=$(stat -c %s "$x86")
	if [ "$size" -le $BUDGET ]; then
		tap_ok "x86_64: $size bytes, within $BUDGET"
	else
		tap_fail "x86_64: $size bytes, within $BUDGET" "over budget by $((size - BUDGET)) bytes"
	fi
	tap_check "x86_64: selftest" "$x86" selftest
	if ! tls_setup >"$tmp/setup.log" 2>&1; then
		for n in "registers over HTTPS with coordinator.ca_file" \
			"registers over HTTPS with the CA at $SYSTEM_BUNDLE" \
			"refuses a server nothing it trusts signed"; do
			tap_fail "x86_64: $n" "TLS set-up failed: $(tail -5 "$tmp/setup.log")"
		done
	else
		start_agent cafile "$tmp/ca.pem"
		if wait_for 30 registered cafile; then
			tap_ok "x86_64: registers over HTTPS with coordinator.ca_file"
		else
			tap_fail "x86_64: registers over HTTPS with coordinator.ca_file" \
				"$(grep "coord\." "$tmp/cafile/agent.log" | tail -5)"
		fi
		name="x86_64: registers over HTTPS with the CA at $SYSTEM_BUNDLE"
		if [ "$(id -u)" -ne 0 ] || [ ! -f "$SYSTEM_BUNDLE" ] ||
			! "${ns_wrap[@]}" true 2>/dev/null; then
			tap_ok "$name # SKIP needs root, unshare and $SYSTEM_BUNDLE"
		else
			start_agent sysbundle "" "${ns_wrap[@]}"
			if wait_for 30 registered sysbundle; then
				tap_ok "$name"
			else
				tap_fail "$name" "$(grep "coord\." "$tmp/sysbundle/agent.log" | tail -5)"
			fi
		fi
		# The machine's own bundle does not hold the test CA: verification must
		# fail and no request may reach the coordinator.
		start_agent untrusted ""
		name="x86_64: refuses a server nothing it trusts signed"
		if ! wait_for 30 logged untrusted 'coord.unreachable.*request=register'; then
			tap_fail "$name" "no failed registration logged: $(grep "coord\." \
				"$tmp/untrusted/agent.log" | tail -5)"
		elif registered untrusted; then
			tap_fail "$name" "it registered: certificates are not verified"
		elif ! logged untrusted 'coord.unreachable.*request=register.*[Cc]ert'; then
			tap_fail "$name" "not a certificate error: $(grep -m1 coord.unreachable \
				"$tmp/untrusted/agent.log")"
		else
			tap_ok "$name"
			grep -m1 'coord.unreachable' "$tmp/untrusted/agent.log" | sed 's/^/#   /'
		fi
	fi
fi

# ---- aarch64 ----

if [ -f "$arm" ]; then
	check_file "aarch64: file says statically linked, ARM aarch64" "$arm" "ARM aarch64"
	if command -v qemu-aarch64-static >/dev/null; then
		tap_check "aarch64: selftest under qemu-aarch64-static" qemu-aarch64-static "$arm" selftest
	else
		tap_fail "aarch64: selftest under qemu-aarch64-static" \
			"qemu-aarch64-static is missing (Debian's qemu-user-static; cross/build.sh installs it)"
	fi
fi
tap_done
