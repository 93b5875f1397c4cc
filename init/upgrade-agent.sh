#!/usr/bin/env bash
# upgrade-agent.sh (installed as /usr/local/sbin/slipway-upgrade-agent):
# upgrades slipway-agent on this instance without interrupting the services
# its proxy serves.
#
#   slipway-upgrade-agent [options] NEW_BINARY
#   slipway-upgrade-agent [options] --rollback
#
# Three steps, in this order (--steps picks some):
#   install  NEW_BINARY must run here (`selftest`) and accept the current
#            configuration (`--check`); the installed binary is kept as
#            BIN.previous and NEW_BINARY is renamed into place, so running
#            processes keep their copy and nothing ever sees half a file.
#   agent    restart the deployer from the new binary: `systemctl restart
#            slipway-agent` (Type=notify: returns once it runs). The proxy is
#            another unit and keeps serving; the new agent finds its journal
#            and re-sends every route.
#   proxy    hand the proxy over to a process of the new binary: start the
#            other slot (slipway-proxy@a <-> @b). The new process takes the
#            listening sockets and the route table from the running one
#            through <control_socket>.handover, says READY=1, and the old one
#            stops accepting, finishes its requests in flight and exits; no
#            listening socket is closed, so no connection is refused. `enable`
#            moves to the new slot so the next boot starts it.
# A failure stops the upgrade where it is; every step can be run again.
#
# Options:
#   --bin PATH          installed binary (default /usr/local/bin/slipway-agent)
#   --config PATH       agent configuration (default /etc/slipway/agent.conf)
#   --token-file PATH   bootstrap token for --check (default /etc/slipway/bootstrap-token)
#   --steps LIST        install,agent,proxy (default: all three)
#   --rollback          install BIN.previous again (then the same steps)
#   --timeout SECONDS   wait this long for the take-over and for the old proxy
#                       to drain and exit (default 60; proxy.stop_timeout is 30 s)
#   --no-systemd        no service manager: the proxy step starts
#                       `BIN proxy --config CONFIG` itself (detached), and the
#                       agent step runs --agent-restart
#   --agent-restart CMD with --no-systemd: a shell command that restarts the agent
#                       from BIN and returns once it runs
#   --proxy-log FILE    with --no-systemd: where the new proxy's output goes
#                       (default /dev/null; with systemd: the journal)
set -euo pipefail

bin=/usr/local/bin/slipway-agent
config=/etc/slipway/agent.conf
token_file=/etc/slipway/bootstrap-token
steps=install,agent,proxy
rollback=0
timeout=60
systemd=1
agent_restart=
proxy_log=/dev/null
new=

say() { echo "upgrade-agent: $*"; }
die() {
	echo "upgrade-agent: ERROR: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case $1 in
	--bin) bin=$2; shift 2 ;;
	--config) config=$2; shift 2 ;;
	--token-file) token_file=$2; shift 2 ;;
	--steps) steps=$2; shift 2 ;;
	--rollback) rollback=1; shift ;;
	--timeout) timeout=$2; shift 2 ;;
	--no-systemd) systemd=0; shift ;;
	--agent-restart) agent_restart=$2; shift 2 ;;
	--proxy-log) proxy_log=$2; shift 2 ;;
	-h | --help) sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) [ -z "$new" ] || die "one NEW_BINARY only"; new=$1; shift ;;
	esac
done
case ,$steps, in *,install,*) do_install=1 ;; *) do_install=0 ;; esac
case ,$steps, in *,agent,*) do_agent=1 ;; *) do_agent=0 ;; esac
case ,$steps, in *,proxy,*) do_proxy=1 ;; *) do_proxy=0 ;; esac
[ "$do_install$do_agent$do_proxy" != 000 ] || die "--steps: install, agent and/or proxy"
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout: seconds"
if [ "$rollback" = 1 ]; then
	[ -z "$new" ] || die "--rollback takes no NEW_BINARY"
	[ -f "$bin.previous" ] || die "no $bin.previous to roll back to"
fi
if [ "$do_install" = 1 ] && [ "$rollback" = 0 ] && [ -z "$new" ]; then
	die "NEW_BINARY missing (see --help)"
fi
[ "$systemd" = 1 ] || [ "$do_agent" = 0 ] || [ -n "$agent_restart" ] ||
	die "--no-systemd needs --agent-restart CMD for the agent step"

# with_token CMD...: runs CMD with the bootstrap token from its file, unless
# the configuration or the environment provides it already.
with_token() {
	if [ -r "$token_file" ] && [ -z "${SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN:-}" ] &&
		[ -z "${SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN_FILE:-}" ] &&
		! grep -q '^[[:space:]]*coordinator\.bootstrap_token[[:space:]]*=' "$config"; then
		SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN_FILE=$token_file "$@"
	else
		"$@"
	fi
}

# The control socket, as the agent's own --check reads the configuration.
control_socket() {
	local dump sock dir
	dump=$(with_token "$1" --check --config "$config") ||
		die "$1 --check refuses $config:"$'\n'"$dump"
	sock=$(sed -n 's/^proxy\.control_socket *= *"\(.*\)".*$/\1/p' <<<"$dump")
	dir=$(sed -n 's/^agent\.state_dir *= *"\(.*\)".*$/\1/p' <<<"$dump")
	echo "${sock:-$dir/proxy.sock}"
}

# The pid the proxy on the control socket reports; empty when none answers.
proxy_pid() {
	{ curl -s --max-time 2 --unix-socket "$sock" http://proxy/v1/health 2>/dev/null || true; } |
		sed -n 's/.*"pid"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p'
}

# A process that runs (a zombie has finished).
running() {
	local st
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
	st=$(sed -E 's/^.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
	[ "$st" != Z ]
}

now_ms() { date +%s%3N; }

# wait_until SECONDS CMD...: polls CMD every 0.1 s.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	while ! "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# ---- install ----
if [ "$do_install" = 1 ]; then
	if [ "$rollback" = 1 ]; then
		new=$(mktemp "$bin.rollback.XXXXXX")
		cp "$bin.previous" "$new"
		chmod 0755 "$new"
		trap 'rm -f "$new"' EXIT
	fi
	[ -f "$new" ] || die "no file $new"
	out=$("$new" selftest 2>&1) || die "$new does not run here (selftest):"$'\n'"$out"
	control_socket "$new" >/dev/null # its --check accepts the configuration
	from=$("$bin" version 2>/dev/null || echo none)
	to=$("$new" version)
	mkdir -p "$(dirname "$bin")"
	if [ -f "$bin" ] && [ "$rollback" = 0 ]; then
		cp -p "$bin" "$bin.previous.tmp"
		mv -f "$bin.previous.tmp" "$bin.previous"
	fi
	cp "$new" "$bin.new.$$"
	chmod 0755 "$bin.new.$$"
	mv -f "$bin.new.$$" "$bin"
	say "installed $to in $bin (was: $from; kept as $bin.previous)"
fi
[ -x "$bin" ] || die "no agent at $bin"
sock=$(control_socket "$bin")

# ---- agent ----
if [ "$do_agent" = 1 ]; then
	t0=$(now_ms)
	if [ "$systemd" = 1 ]; then
		systemctl restart slipway-agent.service ||
			die "systemctl restart slipway-agent failed (journalctl -u slipway-agent)"
		systemctl is-active --quiet slipway-agent.service ||
			die "slipway-agent is not active after its restart"
	else
		bash -c "$agent_restart" || die "--agent-restart failed"
	fi
	say "agent restarted from $bin in $(($(now_ms) - t0)) ms; the proxy kept serving"
fi

# ---- proxy ----
if [ "$do_proxy" = 1 ]; then
	old_pid=$(proxy_pid)
	t0=$(now_ms)
	if [ "$systemd" = 1 ]; then
		old_slot=
		for s in a b; do
			if systemctl is-active --quiet "slipway-proxy@$s.service"; then old_slot=$s; fi
		done
		new_slot=a
		[ "$old_slot" != a ] || new_slot=b
		# Type=notify: returns once the new process serves the sockets it took.
		systemctl start "slipway-proxy@$new_slot.service" ||
			die "slipway-proxy@$new_slot did not start; the running proxy keeps serving (journalctl -u slipway-proxy@$new_slot)"
		new_pid=$(systemctl show -p MainPID --value "slipway-proxy@$new_slot.service")
		systemctl enable --quiet "slipway-proxy@$new_slot.service"
		if [ -n "$old_slot" ]; then
			systemctl disable --quiet "slipway-proxy@$old_slot.service"
		fi
		was=${old_slot:+slipway-proxy@$old_slot}
		label="slipway-proxy@$new_slot (was: ${was:-none})"
	else
		setsid "$bin" proxy --config "$config" </dev/null >>"$proxy_log" 2>&1 &
		new_pid=$!
		label="pid $new_pid"
	fi
	# The new process answers on the control socket once it took over.
	took() {
		local p
		p=$(proxy_pid)
		[ -n "$p" ] && [ "$p" = "$new_pid" ] && return 0
		running "$new_pid" || die "the new proxy (pid $new_pid) exited before it took over; the old one keeps serving"
		return 1
	}
	wait_until "$timeout" took || die "the new proxy (pid $new_pid) did not take over within $timeout s"
	say "proxy handed over to $label in $(($(now_ms) - t0)) ms (old pid ${old_pid:-none})"
	if [ -n "$old_pid" ] && [ "$old_pid" != "$new_pid" ]; then
		gone() { ! running "$old_pid"; }
		wait_until "$timeout" gone ||
			die "the old proxy (pid $old_pid) still runs after $timeout s (proxy.stop_timeout cuts its last requests)"
		say "old proxy (pid $old_pid) drained and exited $(($(now_ms) - t0)) ms after the start of the hand-over"
	fi
fi
say "done: $("$bin" version)"
