#!/bin/sh
# bundle.sh: packs an agent binary with what installs and runs it, for the
# AMI bake (init/packer) and for cloud-init's download path.
#
#   init/bundle.sh BINARY OUT.tar.gz
#
# BINARY is normally the static build (`make static`, `make static
# ARCH=aarch64`). The archive holds one directory, slipway-agent/, laid out
# like init/ so install-agent.sh finds everything beside itself:
#   slipway-agent/slipway-agent            the binary
#   slipway-agent/install-agent.sh, upgrade-agent.sh
#   slipway-agent/systemd/slipway-agent.service, slipway-proxy@.service,
#                         slipway-agent.sysusers
#   slipway-agent/examples/agent.conf
# The archive is reproducible (sorted, fixed times and owners); its SHA-256
# is printed last, for SLIPWAY_AGENT_SHA256 in the cloud-init user-data.
set -eu

die() {
	echo "bundle: $*" >&2
	exit 1
}

[ $# -eq 2 ] || die "usage: $0 BINARY OUT.tar.gz"
binary=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$binary" ] || die "no binary at $binary"

stage=$(mktemp -d "${TMPDIR:-/tmp}/slipway-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
d=$stage/slipway-agent
mkdir -p "$d/systemd" "$d/examples"
cp "$binary" "$d/slipway-agent"
cp "$here/install-agent.sh" "$here/upgrade-agent.sh" "$d/"
cp "$here/systemd/slipway-agent.service" "$here/systemd/slipway-proxy@.service" \
	"$here/systemd/slipway-agent.sysusers" "$d/systemd/"
cp "$here/examples/agent.conf" "$d/examples/"
chmod 0755 "$d/slipway-agent" "$d/install-agent.sh" "$d/upgrade-agent.sh"
chmod 0644 "$d/systemd/"* "$d/examples/"*

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	-C "$stage" -cf - slipway-agent | gzip -n -9 >"$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
echo "bundle: $out ($(wc -c <"$out") bytes)"
sha256sum "$out" | cut -d' ' -f1
