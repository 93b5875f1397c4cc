#!/usr/bin/env bash
# shellcheck disable=SC2016 # backquotes are Markdown here, not expansions
# docs/configuration.md against the daemons' own settings (docs/gen-config.sh).
#
#   1-2  every key `slipway-agent --help` / `slipway-coordinator --help` lists
#        is a row of the generated section, and no row names another key
#   3    the generated section of docs/configuration.md is what the binaries
#        print now (else: the diff, and the command that regenerates it)
#   4    --check notices a changed copy, --write repairs it
#   5    a --help line that looks like a key but does not parse stops the
#        generator (a silently missing row would pass test 3)
#   6    every setting or log event the five operator docs name in backquotes
#        outside the generated tables (`proxy.spawn`, `proxy.spawn = false`,
#        `coord.unreachable`) exists in a schema or in a log_*() call
# Needs only the built binaries (make); no Docker.
set -u
top=${SLIPWAY_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${SLIPWAY_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
export SLIPWAY_BUILD=$build
# shellcheck source=../lib/tap.sh
. "$top/tests/lib/tap.sh"
gen=$top/docs/gen-config.sh
doc=$top/docs/configuration.md
REGEN='make -j2 all && docs/gen-config.sh --write'

tap_plan 6
tmp=$(mktemp -d /tmp/slipway-docs-config-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

keys_of() { # BINARY: the key names its --help lists
	env -i PATH=/usr/bin:/bin "$1" --help | sed -nE 's/^([a-z][a-z0-9_]*(\.[a-z0-9_]+)+) \(.*/\1/p'
}

if ! "$gen" >"$tmp/section" 2>"$tmp/gen.err"; then
	tap_fail "agent keys rendered" "$(cat "$tmp/gen.err")"
	tap_fail "coordinator keys rendered" "generator failed"
else
	# The rows of one daemon: between its "### name" heading and the next one.
	awk '/^### slipway-agent$/ {on = 1; next} /^### / {on = 0} on' "$tmp/section" >"$tmp/agent.rows"
	awk '/^### slipway-coordinator$/ {on = 1; next} /^### / {on = 0} on' "$tmp/section" \
		>"$tmp/coord.rows"
	for d in agent:slipway-agent coord:slipway-coordinator; do
		short=${d%%:*} bin=${d#*:}
		keys_of "$build/$bin" | sort >"$tmp/$short.want"
		sed -nE 's/^\| `([^`]+)` \|.*/\1/p' "$tmp/$short.rows" | sort >"$tmp/$short.got"
		n=$(wc -l <"$tmp/$short.want")
		if [ "$n" -gt 0 ] && diff -u "$tmp/$short.want" "$tmp/$short.got" >"$tmp/$short.diff"; then
			tap_ok "$bin: all $n keys of --help are rows"
		else
			tap_fail "$bin: keys of --help vs rows (want $n)" "$(cat "$tmp/$short.diff")"
		fi
	done
fi

if out=$("$gen" --check 2>&1); then
	tap_ok "docs/configuration.md matches the binaries"
else
	tap_fail "docs/configuration.md matches the binaries" \
		"$(printf '%s\n' "$out" | head -80)"$'\n'"regenerate with: $REGEN"
fi

# A copy with one row dropped must fail --check, and --write must repair it.
sed '0,/^| `proxy\.bind` |/{/^| `proxy\.bind` |/d}' "$doc" >"$tmp/copy.md"
if cmp -s "$doc" "$tmp/copy.md"; then
	tap_fail "--check notices a missing row" "no proxy.bind row to remove in $doc"
elif DOC=$tmp/copy.md "$gen" --check >/dev/null 2>&1; then
	tap_fail "--check notices a missing row" "--check passed on a copy without proxy.bind"
elif ! DOC=$tmp/copy.md "$gen" --write >/dev/null 2>"$tmp/w.err" ||
	! DOC=$tmp/copy.md "$gen" --check >/dev/null 2>&1 ||
	! grep -q '^| `proxy\.bind` |' "$tmp/copy.md"; then
	tap_fail "--check notices a missing row, --write repairs it" "$(cat "$tmp/w.err")"
else
	tap_ok "--check notices a missing row, --write repairs it"
fi

# Stand-in binaries whose --help has one malformed key line.
mkdir -p "$tmp/fake"
for bin in slipway-agent slipway-coordinator; do
	printf '#!/bin/sh\ncat <<"EOF"\nusage: %s\nlog.level (enum: debug|info, default info)\n    Level\nlog.syslog (bool, default\n    Broken\nEOF\n' \
		"$bin" >"$tmp/fake/$bin"
	chmod +x "$tmp/fake/$bin"
done
if SLIPWAY_BUILD=$tmp/fake "$gen" >"$tmp/fake.out" 2>"$tmp/fake.err"; then
	tap_fail "a malformed key line stops the generator" "$(head -20 "$tmp/fake.out")"
elif grep -q 'log.syslog' "$tmp/fake.err"; then
	tap_ok "a malformed key line stops the generator"
else
	tap_fail "a malformed key line stops the generator (error names the line)" \
		"$(cat "$tmp/fake.err")"
fi

# Settings and log events named in the docs exist. A backquoted dotted name
# whose first part is a settings group or an event prefix must be one of them.
{
	keys_of "$build/slipway-agent"
	keys_of "$build/slipway-coordinator"
} | sort -u >"$tmp/all.keys"
grep -rhoE 'log_(debug|info|warn|error)\("[a-z0-9_.]+"|log_msg\([^,()]+, "[a-z0-9_.]+"' \
	"$top"/common "$top"/agent "$top"/coordinator "$top"/cli --include='*.c' |
	sed -E 's/.*"([^"]+)"$/\1/' | sort -u >"$tmp/all.events"
sort -u "$tmp/all.keys" "$tmp/all.events" >"$tmp/all.names"
prefixes=$(sed 's/\..*//' "$tmp/all.names" | sort -u | paste -sd'|')
unknown=""
named=0
for f in configuration operations security architecture testing; do
	[ -f "$top/docs/$f.md" ] || continue
	while IFS= read -r k; do
		named=$((named + 1))
		grep -qxF "$k" "$tmp/all.names" ||
			unknown+="docs/$f.md: \`$k\` is neither a setting nor a log event"$'\n'
	done < <(awk '/^<!-- BEGIN GENERATED SETTINGS/ {g = 1} !g {print} /^<!-- END GENERATED SETTINGS/ {g = 0}' \
		"$top/docs/$f.md" | grep -oE '`[a-z][a-z0-9_]*(\.[a-z0-9_]+)+( = [^`]*)?`' |
		sed -E 's/^`//; s/`$//; s/ = .*//' | grep -E "^($prefixes)\." |
		grep -vE '\.(md|sh|c|h|py|conf|yaml|yml|json|jsonl|service|db|key|sock|log|gz|new|lock|env)$')
done
if [ -z "$unknown" ] && [ "$named" -gt 0 ] && [ -s "$tmp/all.events" ]; then
	tap_ok "the $named settings and log events the docs name exist"
else
	tap_fail "settings and log events named in the docs exist ($named named)" "$unknown"
fi
tap_done
