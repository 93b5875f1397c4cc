#!/usr/bin/env bash
# gen-config.sh: the settings tables of docs/configuration.md, rendered from
# the daemons themselves (`slipway-agent --help`, `slipway-coordinator
# --help`: common/config.c's config_usage prints every key of the schema).
#
#   docs/gen-config.sh            print the generated section on stdout
#   docs/gen-config.sh --write    replace the section in docs/configuration.md
#   docs/gen-config.sh --check    exit 1 (with a diff) when the file differs
#
# Environment: SLIPWAY_BUILD (default build/) holds the binaries (`make`);
# DOC overrides the file --write and --check work on.
# The section sits between the two marker lines below; everything else in the
# file is written by hand. tests/integration/test_docs_config.sh runs --check.
#
# Robustness: a line of --help that starts like a key ("a.b (") but does not
# parse, or any unexpected line after the first key, is an error, never a
# silently missing row; so is a run that finds no key at all.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${SLIPWAY_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
doc=${DOC:-$top/docs/configuration.md}
BEGIN='<!-- BEGIN GENERATED SETTINGS: docs/gen-config.sh --write; do not edit by hand -->'
END='<!-- END GENERATED SETTINGS -->'
REGEN='make -j2 all && docs/gen-config.sh --write'

mode="print"
case ${1:-} in
'') ;;
--write) mode="write" ;;
--check) mode="check" ;;
-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "usage: docs/gen-config.sh [--write|--check]" >&2; exit 2 ;;
esac

for bin in slipway-agent slipway-coordinator; do
	if [ ! -x "$build/$bin" ]; then
		echo "gen-config: $build/$bin is missing; build it first: $REGEN" >&2
		exit 1
	fi
done

tmp=$(mktemp -d /tmp/slipway-gen-config-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# --help must not depend on the caller's environment or files.
env -i PATH=/usr/bin:/bin "$build/slipway-agent" --help >"$tmp/agent.help"
env -i PATH=/usr/bin:/bin "$build/slipway-coordinator" --help >"$tmp/coord.help"

# render: the section (markers included) from the two --help texts.
python3 - "$tmp/agent.help" "$tmp/coord.help" "$BEGIN" "$END" >"$tmp/section" <<'PY'
import re
import sys

agent_help, coord_help, begin, end = sys.argv[1:5]
KEY = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+) \((.*)\)$")
KEYISH = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+ \(")
TAIL = re.compile(r"^(.*?)(?:, (required|optional)|, default (.*))$")


def fail(path, n, line, why):
    sys.exit(f"gen-config: {path}:{n}: {why}: {line!r}")


def parse(path):
    keys = []
    for n, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        m = KEY.match(line)
        if m:
            t = TAIL.match(m.group(2))
            if not t:
                fail(path, n, line, "cannot read the type and default")
            kind, flag, default = t.groups()
            keys.append({"name": m.group(1), "type": kind, "flag": flag,
                         "default": default, "help": []})
        elif KEYISH.match(line):
            fail(path, n, line, "looks like a key but does not parse")
        elif line.startswith("    ") and keys:
            keys[-1]["help"].append(line.strip())
        elif line.strip() and keys:
            fail(path, n, line, "unexpected line after the first key")
    if not keys:
        sys.exit(f"gen-config: {path}: no keys found in --help")
    return keys


def escape_text(s):
    """Markdown-safe table cell: code spans kept, '|' escaped everywhere."""
    out = []
    for i, part in enumerate(s.split("`")):
        if i % 2 == 0:  # outside code spans
            part = re.sub(r"([\\*<>\[\]])", r"\\\1", part)
        out.append(part.replace("|", "\\|"))
    return "`".join(out)


def code(s):
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") or s == "" else ""
    return f"{fence}{pad}{s}{pad}{fence}".replace("|", "\\|")


def type_cell(kind):
    m = re.match(r"^enum: (.*)$", kind)
    if m:
        return "enum: " + ", ".join(code(c) for c in m.group(1).split("|"))
    m = re.match(r"^(\w+)(.*)$", kind)
    base, rest = m.group(1), m.group(2)
    cell = code(base)
    rest = rest.strip()
    if rest.startswith(", at most "):
        cell += " ≤ " + rest[len(", at most "):]
    elif rest:
        cell += " " + escape_text(rest)
    if base == "secret":
        cell += " (or `_FILE`)"
    return cell


def default_cell(k):
    if k["flag"] == "required":
        return "**required**"
    if k["flag"] == "optional":
        return "unset"
    # as the file would say it: a default --help prints quoted stays quoted ("")
    return code(k["default"])


def render(title, keys):
    print(f"### {title}")
    print()
    groups = {}
    for k in keys:
        groups.setdefault(k["name"].split(".")[0], []).append(k)
    for g, ks in groups.items():
        print(f"#### `{g}.*`")
        print()
        print("| key | type | default | meaning |")
        print("|---|---|---|---|")
        for k in ks:
            print(f"| {code(k['name'])} | {type_cell(k['type'])} | {default_cell(k)} | "
                  f"{escape_text(' '.join(k['help']))} |")
        print()


print(begin)
print()
render("slipway-agent", parse(agent_help))
render("slipway-coordinator", parse(coord_help))
print(end)
PY

# extract FILE: the generated section of FILE (markers included), or nothing.
extract() {
	awk -v b="$BEGIN" -v e="$END" '$0 == b {on = 1} on {print} on && $0 == e {exit}' "$1"
}

case $mode in
print)
	cat "$tmp/section"
	;;
write)
	if ! grep -qxF "$BEGIN" "$doc" || ! grep -qxF "$END" "$doc"; then
		echo "gen-config: $doc has no marker lines; add these two where the tables go:" >&2
		printf '%s\n%s\n' "$BEGIN" "$END" >&2
		exit 1
	fi
	awk -v b="$BEGIN" -v e="$END" -v f="$tmp/section" '
		$0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
		skip && $0 == e { skip = 0; next }
		!skip { print }' "$doc" >"$tmp/doc"
	cat "$tmp/doc" >"$doc"
	echo "gen-config: wrote $(grep -c '^| `' "$tmp/section") settings into $doc"
	;;
check)
	extract "$doc" >"$tmp/current"
	if ! diff -u --label "$doc (generated section)" --label "fresh from --help" \
		"$tmp/current" "$tmp/section"; then
		echo "gen-config: $doc is out of date; regenerate it with: $REGEN" >&2
		exit 1
	fi
	;;
esac
