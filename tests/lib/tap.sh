# TAP output for bash tests (tests/run counts "ok N" / "not ok N" lines).
#   . "$SLIPWAY_TOP/tests/lib/tap.sh"
#   tap_plan 3
#   tap_ok "registry answers"
#   tap_fail "body" "got: $body"          # detail lines become "# " comments
#   tap_check "image exists" docker image inspect "$img"   # ok if CMD exits 0
#   tap_done                               # exit status: 0 only if nothing failed
_tap_n=0
_tap_failed=0

tap_plan() { echo "1..$1"; }

tap_ok() {
	_tap_n=$((_tap_n + 1))
	echo "ok $_tap_n - $1"
}

tap_fail() {
	_tap_n=$((_tap_n + 1))
	_tap_failed=$((_tap_failed + 1))
	echo "not ok $_tap_n - $1"
	[ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/#   /'
}

# tap_check NAME CMD...: runs CMD; its output is shown only when it fails.
tap_check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		tap_ok "$name"
	else
		tap_fail "$name" "command failed (exit $?): $*${out:+$'\n'$out}"
	fi
}

tap_done() { exit $((_tap_failed > 0)); }
