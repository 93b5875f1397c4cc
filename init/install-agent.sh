#!/bin/sh
# install-agent.sh: installs slipway-agent, its systemd units, its user and
# the upgrade script. It neither writes the configuration nor starts anything
# (cloud-init's bootstrap does both; by hand: docs/operations.md).
#
#   install-agent.sh [--binary PATH] [--root DIR] [--no-selftest]
#
# Runs from an unpacked bundle (init/bundle.sh: the binary next to this
# script) or from the repository's init/ directory with --binary. Used by the
# AMI bake (init/packer) and by cloud-init when the binary comes from a URL.
#
#   --binary PATH   the agent to install (default: ./slipway-agent beside this script)
#   --root DIR      install under DIR instead of / (an image, or a test): no
#                   user is created and systemd is not told
#   --no-selftest   do not run the binary first (another architecture)
#
# Installs:
#   /usr/local/bin/slipway-agent                 (replaced atomically; a running
#                                                 agent keeps its old copy)
#   /etc/systemd/system/slipway-agent.service, slipway-proxy@.service
#   /etc/sysusers.d/slipway-agent.conf           (user slipway-agent, group docker)
#   /usr/local/sbin/slipway-upgrade-agent        (init/upgrade-agent.sh)
#   /usr/local/share/slipway/agent.conf.example  (every key, documented)
#   /etc/slipway/                                (0755; config and token go here)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary=
root=
selftest=1

die() {
	echo "install-agent: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case $1 in
	--binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
	--root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
	--no-selftest) selftest=0; shift ;;
	-h | --help) sed -n '2,26p' "$0"; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

[ -n "$binary" ] || binary=$here/slipway-agent
[ -f "$binary" ] || die "no agent binary at $binary (give --binary PATH)"
for f in systemd/slipway-agent.service systemd/slipway-proxy@.service \
	systemd/slipway-agent.sysusers upgrade-agent.sh examples/agent.conf; do
	[ -f "$here/$f" ] || die "missing $here/$f (run from a bundle or the repository's init/)"
done
if [ -n "$root" ]; then
	mkdir -p "$root"
	root=$(cd "$root" && pwd)
elif [ "$(id -u)" != 0 ]; then
	die "run as root (or with --root DIR)"
fi

# A binary that does not run here (wrong architecture, truncated download)
# must not replace one that does.
if [ "$selftest" = 1 ]; then
	out=$("$binary" selftest 2>&1) || die "$binary selftest failed:
$out"
fi
version=$("$binary" version 2>/dev/null || echo "slipway-agent (unknown version)")

# install_file SRC DEST MODE: write beside DEST, then rename over it, so a
# reader (or a running process's next exec) sees the old or the new file.
install_file() {
	mkdir -p "$(dirname "$2")"
	tmp="$2.install.$$"
	cp "$1" "$tmp"
	chmod "$3" "$tmp"
	mv -f "$tmp" "$2"
}

install_file "$binary" "$root/usr/local/bin/slipway-agent" 0755
install_file "$here/systemd/slipway-agent.service" "$root/etc/systemd/system/slipway-agent.service" 0644
install_file "$here/systemd/slipway-proxy@.service" "$root/etc/systemd/system/slipway-proxy@.service" 0644
install_file "$here/systemd/slipway-agent.sysusers" "$root/etc/sysusers.d/slipway-agent.conf" 0644
install_file "$here/upgrade-agent.sh" "$root/usr/local/sbin/slipway-upgrade-agent" 0755
install_file "$here/examples/agent.conf" "$root/usr/local/share/slipway/agent.conf.example" 0644
mkdir -p "$root/etc/slipway"
chmod 0755 "$root/etc/slipway"

if [ -z "$root" ]; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers /etc/sysusers.d/slipway-agent.conf
	elif ! id slipway-agent >/dev/null 2>&1; then
		getent group docker >/dev/null 2>&1 || groupadd --system docker
		useradd --system --home-dir /var/lib/slipway-agent --no-create-home \
			--shell /usr/sbin/nologin --groups docker slipway-agent
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
	fi
fi
echo "install-agent: installed $version into ${root:-/}"
