#!/usr/bin/env bash
# cross/build.sh x86_64|aarch64: a fully static, stripped slipway-agent linked
# with musl, from Debian's source packages (docs/static-build.md).
#
#   cross/build.sh x86_64     -> build/cross/x86_64/slipway-agent  (musl-tools' musl-gcc)
#   cross/build.sh aarch64    -> build/cross/aarch64/slipway-agent (musl built from
#                                Debian's musl source with gcc-aarch64-linux-gnu)
#
# The libraries (zlib, mbedTLS, libcurl HTTP-only on mbedTLS, cJSON, libev,
# http-parser, expat; musl too for aarch64) come from `apt-get source` at
# exactly the versions pinned in cross/versions, with Debian's patches
# applied. They are built once into build/cross/ARCH/deps-KEY/, KEY being a
# hash of cross/versions, this script, the architecture and the compiler, so
# a second run only rebuilds the agent's own sources. Nothing is fetched from
# anywhere but the machine's Debian apt sources; nothing lands outside
# build/cross/ except the deb-src entry and the build dependencies this script
# installs.
#
# Environment: CROSS_DIR (default build/cross), JOBS (default nproc),
# KEEP_WORK=1 keeps the unpacked library sources after a successful build.
set -euo pipefail

usage() { echo "usage: cross/build.sh x86_64|aarch64" >&2; exit 2; }
[ $# -eq 1 ] || usage
arch=$1
case $arch in x86_64 | aarch64) ;; *) usage ;; esac

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
out=${CROSS_DIR:-$top/build/cross}
mkdir -p "$out"
out=$(cd "$out" && pwd)
adir=$out/$arch
jobs=${JOBS:-$(nproc)}
versions_file=$top/cross/versions
srcdir=$out/src # downloaded .dsc and tarballs, shared by both architectures

# The stripped x86_64 agent must stay within this (1.5 MB).
BUDGET_BYTES=1500000
# Debian releases whose source packages are pinned.
SUITES_RE='^bookworm(-updates|-security)?$'
DEBSRC_NAME=slipway-deb-src.sources # in apt's sources.list.d

t_start=$(date +%s.%N)
say() { printf 'cross[%s]: %s\n' "$arch" "$*"; }
die() { printf 'cross[%s]: error: %s\n' "$arch" "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

# step NAME CMD...: runs CMD with its output in logs/NAME.log; on failure shows
# the log's tail and stops.
step() {
	local name=$1 t0 log
	shift
	log=$adir/logs/$name.log
	mkdir -p "$adir/logs"
	t0=$(date +%s.%N)
	# In the background, not under `if`: there errexit would be off in CMD.
	"$@" >"$log" 2>&1 &
	if ! wait $!; then
		tail -40 "$log" | cut -c1-300 | sed 's/^/    | /' >&2
		die "$name failed (full log: $log)"
	fi
	say "$name: $(elapsed "$t0")"
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo "$@"
	else
		die "needs root for: $* (run as root, or install it yourself first)"
	fi
}

# ---- build dependencies (Debian packages) ----

# autoconf, automake, libtool: expat's source has no configure script; Debian
# generates it (buildconf.sh) and so do we.
packages=(dpkg-dev file make gcc binutils patch xz-utils bzip2 autoconf automake libtool)
case $arch in
x86_64) packages+=(musl-tools) ;;
aarch64) packages+=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user-static) ;;
esac

apt_updated=0
apt_update() {
	[ $apt_updated -eq 1 ] && return 0
	as_root apt-get update -q >"$adir/logs/apt-update.log" 2>&1 ||
		{ tail -20 "$adir/logs/apt-update.log" >&2; die "apt-get update failed"; }
	apt_updated=1
}

install_packages() {
	local p missing=()
	for p in "${packages[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]}"
	apt_update
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${missing[@]}" >"$adir/logs/apt-install.log" 2>&1 ||
		{ tail -20 "$adir/logs/apt-install.log" >&2; die "apt-get install failed"; }
}

# ---- deb-src entries ----

# Signed-By of the apt entry "FILE:N" (N: paragraph of a .sources file, line of
# a .list file), when it names a keyring file.
entry_signed_by() {
	local file=${1%:*} n=${1##*:} v=""
	[ -r "$file" ] || return 0
	case $file in
	*.sources)
		v=$(awk -v n="$n" 'BEGIN { RS = "" } NR == n' "$file" |
			sed -n 's/^[Ss]igned-[Bb]y:[[:space:]]*//p' | head -1) ;;
	*.list)
		v=$(sed -n "${n}p" "$file" | grep -o 'signed-by=[^] ]*' | head -1 | cut -d= -f2) ;;
	esac
	case $v in /*) echo "$v" ;; esac
}

# Adds deb-src entries mirroring the machine's own bookworm deb entries (same
# mirror, components and keyring) in one file of ours, for each suite that has
# no deb-src entry elsewhere. Idempotent: the file is rewritten only when its
# content would change, and removed when nothing is missing. (indextargets
# needs --no-release-info to list anything before the first apt-get update.)
ensure_deb_src() {
	local debs have text="" uri rel comps entry sb parts=""
	eval "$(apt-config shell parts Dir::Etc::sourceparts/d)"
	DEBSRC_FILE=${parts%/}/$DEBSRC_NAME
	# shellcheck disable=SC2016 # apt's own $(FIELD) syntax
	debs=$(apt-get indextargets --no-release-info \
		--format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(SOURCESENTRY)' 'Identifier: Packages' |
		awk -v re="$SUITES_RE" '$2 ~ re' | sort -u)
	[ -n "$debs" ] || die "no bookworm entries in the apt sources: this build needs Debian 12"
	# shellcheck disable=SC2016
	have=$(apt-get indextargets --no-release-info --format '$(RELEASE) $(SOURCESENTRY)' \
		'Identifier: Sources' |
		grep -v " $DEBSRC_FILE:" | awk '{ print $1 }' | sort -u || true)
	while read -r uri rel; do
		grep -qx "$rel" <<<"$have" && continue
		comps=$(awk -v u="$uri" -v r="$rel" '$1 == u && $2 == r { print $3 }' <<<"$debs" |
			sort -u | tr '\n' ' ')
		entry=$(awk -v u="$uri" -v r="$rel" '$1 == u && $2 == r { print $4; exit }' <<<"$debs")
		sb=$(entry_signed_by "$entry")
		text+="Types: deb-src"$'\n'"URIs: $uri"$'\n'"Suites: $rel"$'\n'
		text+="Components: ${comps% }"$'\n'"${sb:+Signed-By: $sb$'\n'}"$'\n'
	done < <(awk '{ print $1, $2 }' <<<"$debs" | sort -u)
	if [ -z "$text" ]; then
		if [ -e "$DEBSRC_FILE" ]; then
			say "deb-src entries exist elsewhere: removing $DEBSRC_FILE"
			as_root rm -f "$DEBSRC_FILE"
		fi
		return 0
	fi
	text="# Added by slipway's cross/build.sh: source packages for the static agent."$'\n'$text
	if ! cmp -s <(printf '%s' "$text") "$DEBSRC_FILE"; then
		say "adding deb-src entries: $DEBSRC_FILE"
		printf '%s' "$text" | as_root tee "$DEBSRC_FILE" >/dev/null
	fi
}

# ---- pinned source packages ----

declare -A pin_version pin_skip
while read -r name version opts; do
	case $name in '' | '#'*) continue ;; esac
	[ -n "$version" ] || die "cross/versions: no version for $name"
	pin_version[$name]=$version
	pin_skip[$name]=""
	case ${opts:-} in '' | '#'*) ;; skip=*) pin_skip[$name]=${opts#skip=} ;;
	*) die "cross/versions: $name: unknown option \"$opts\"" ;; esac
done <"$versions_file"
for name in musl zlib mbedtls curl cjson libev http-parser expat; do
	[ -n "${pin_version[$name]:-}" ] || die "cross/versions: $name is not pinned"
done

# The .dsc of NAME at its pinned version (the epoch is not part of file names).
dsc_path() { local v=${pin_version[$1]}; echo "$srcdir/${1}_${v#*:}.dsc"; }

# Downloads the pinned source package unless it is already in build/cross/src.
# apt checks the files against the signed Sources index; the .dsc must then
# name exactly the pinned version.
fetch_source() {
	local name=$1 version=${pin_version[$1]} dsc offered got
	dsc=$(dsc_path "$name")
	if [ ! -f "$dsc" ]; then
		offered=$(apt-cache showsrc --only-source "$name" 2>/dev/null |
			sed -n 's/^Version: //p' | sort -u | tr '\n' ' ')
		tr ' ' '\n' <<<"$offered" | grep -qxF -- "$version" || die "cross/versions pins $name $version, \
but apt offers ${offered:-no version of it}: Debian has replaced it (a security update?). \
Read its debian/changelog, then update cross/versions."
		(cd "$srcdir" && apt-get source -q --download-only -o APT::Sandbox::User=root \
			"$name=$version") >"$adir/logs/source-$name.log" 2>&1 ||
			{ tail -20 "$adir/logs/source-$name.log" >&2; die "apt-get source $name=$version failed"; }
	fi
	[ -f "$dsc" ] || die "apt-get source $name=$version gave no $(basename "$dsc")"
	got=$(sed -n 's/^Version: //p' "$dsc")
	[ "$got" = "$version" ] || die "$(basename "$dsc") is version $got, cross/versions pins $version"
}

# Unpacks NAME into work/NAME and applies Debian's patch series minus the
# patches cross/versions skips.
unpack() {
	local name=$1 dir=$adir/work/$1 series p opt s
	rm -rf "$dir"
	mkdir -p "$adir/work"
	dpkg-source --skip-patches -x "$(dsc_path "$name")" "$dir" >/dev/null
	series=$dir/debian/patches/series
	for s in ${pin_skip[$name]//,/ }; do
		if [ ! -f "$series" ] || ! grep -q "^$s\b" "$series"; then
			die "cross/versions: $name: skipped patch $s is not in Debian's series"
		fi
	done
	[ -f "$series" ] || return 0
	while read -r p opt; do
		case $p in '' | '#'*) continue ;; esac
		if [[ ",${pin_skip[$name]}," == *",$p,"* ]]; then
			echo "skipping Debian patch $p"
			continue
		fi
		echo "applying Debian patch $p"
		patch -d "$dir" "${opt:--p1}" -s -N --no-backup-if-mismatch -i "debian/patches/$p"
	done <"$series"
}

# ---- toolchain ----

LIBCFLAGS="-Os -ffunction-sections -fdata-sections"
case $arch in
x86_64)
	triple=x86_64-linux-musl
	cross_prefix=""
	run=() # runs here natively
	;;
aarch64)
	triple=aarch64-linux-musl
	cross_prefix=aarch64-linux-gnu-
	run=(qemu-aarch64-static) # binfmt_misc may be absent: call qemu explicitly
	;;
esac
AR=${cross_prefix}ar
RANLIB=${cross_prefix}ranlib
STRIP=${cross_prefix}strip

mkdir -p "$adir/logs"
exec 9>"$adir/.lock"
flock -n 9 || { say "waiting for another build of $arch"; flock 9; }

install_packages
build_triple=$(gcc -dumpmachine)
toolchain_id="$("${cross_prefix}gcc" -dumpmachine) gcc $("${cross_prefix}gcc" -dumpfullversion)"
if [ "$arch" = x86_64 ]; then
	# x86_64 uses Debian's musl binary package: it must be the pinned musl.
	musl_have=$(dpkg-query -W -f='${Version}' musl-dev)
	[ "$musl_have" = "${pin_version[musl]}" ] || die "musl-dev is $musl_have, \
cross/versions pins musl ${pin_version[musl]}: install that version or update the pin"
	toolchain_id+=" musl-dev $musl_have"
fi

# The cache key: what the libraries are built from and how.
key=$( { cat "$versions_file" "$top/cross/build.sh"; echo "$arch $toolchain_id"; } |
	sha256sum | cut -c1-16)
deps=$adir/deps-$key
case $arch in
x86_64) CC=musl-gcc ;;
aarch64) CC=$deps/musl/bin/musl-gcc ;;
esac

# ---- the libraries ----

build_musl() { # aarch64 only: Debian has no musl for it as a cross toolchain
	unpack musl
	cd "$adir/work/musl"
	./configure --target=aarch64 --prefix="$deps/musl" --disable-shared --enable-wrapper=gcc \
		CROSS_COMPILE="$cross_prefix" CC="${cross_prefix}gcc"
	make -j"$jobs"
	make install
	[ -x "$deps/musl/bin/musl-gcc" ]
}

build_zlib() {
	unpack zlib
	cd "$adir/work/zlib"
	CC=$CC CFLAGS=$LIBCFLAGS AR=$AR RANLIB=$RANLIB ./configure --static --prefix="$deps"
	make -j"$jobs" libz.a
	install -D -m644 libz.a "$deps/lib/libz.a"
	install -D -m644 -t "$deps/include" zlib.h zconf.h
}

# Debian's own configuration (debian/rules) turns threading on; so do we, for
# the same behaviour as the everyday build. Its other additions (MD2, MD4,
# HAVEGE, CMAC, DTLS-SRTP) are nothing the agent uses.
build_mbedtls() {
	local h=include/mbedtls/config.h o
	unpack mbedtls
	cd "$adir/work/mbedtls"
	for o in MBEDTLS_THREADING_C MBEDTLS_THREADING_PTHREAD; do
		sed -i "s|^//[[:space:]]*#define $o\$|#define $o|" "$h"
		grep -q "^#define $o\$" "$h" || die "mbedtls: could not set $o in $h"
	done
	make -C library -j"$jobs" CC="$CC" AR="$AR" CFLAGS="$LIBCFLAGS" static
	mkdir -p "$deps/include" "$deps/lib"
	cp -r include/mbedtls include/psa "$deps/include/"
	cp library/libmbedtls.a library/libmbedx509.a library/libmbedcrypto.a "$deps/lib/"
}

# HTTP and HTTPS (mbedTLS), unix sockets, proxies, the threaded resolver; the
# rest is left out. Date parsing stays: http_client reads Retry-After dates
# with curl_getdate. No CA bundle is compiled in (configure only looks for one
# when not cross-compiling, so the two builds would differ): http_client picks
# the system's at run time.
curl_features=(
	--disable-ftp --disable-file --disable-ldap --disable-ldaps --disable-rtsp
	--disable-dict --disable-telnet --disable-tftp --disable-pop3 --disable-imap
	--disable-smb --disable-smtp --disable-gopher --disable-mqtt --disable-websockets
	--disable-manual --disable-verbose --disable-alt-svc --disable-hsts --disable-doh
	--disable-mime --disable-cookies --disable-netrc --disable-progress-meter
	--disable-http-auth --disable-crypto-auth --disable-ntlm --disable-ntlm-wb
	--disable-tls-srp --disable-get-easy-options --disable-headers-api
	--disable-libcurl-option --disable-dnsshuffle --disable-ares --disable-sspi
	--disable-openssl-auto-load-config --disable-versioned-symbols
	--enable-http --enable-proxy --enable-unix-sockets --enable-ipv6
	--enable-threaded-resolver --enable-pthreads --enable-dateparse
	--with-mbedtls="$deps" --without-zlib --without-brotli --without-zstd
	--without-nghttp2 --without-ngtcp2 --without-nghttp3 --without-quiche --without-msh3
	--without-hyper --without-libidn2 --without-libpsl --without-librtmp
	--without-libssh2 --without-libssh --without-wolfssh --without-libgsasl
	--without-ca-bundle --without-ca-path
)

build_curl() {
	unpack curl
	cd "$adir/work/curl"
	./configure --host="$triple" --build="$build_triple" --prefix="$deps" \
		--disable-shared --enable-static --disable-dependency-tracking \
		CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$LIBCFLAGS" \
		CPPFLAGS="-I$deps/include" LDFLAGS="-L$deps/lib" "${curl_features[@]}"
	make -j"$jobs" -C lib
	make -C lib install
	make -C include install
}

build_cjson() {
	unpack cjson
	cd "$adir/work/cjson"
	make -j"$jobs" libcjson.a CC="$CC" AR="$AR" CFLAGS="$LIBCFLAGS" PIC_FLAGS=
	install -D -m644 cJSON.h "$deps/include/cjson/cJSON.h"
	install -D -m644 libcjson.a "$deps/lib/libcjson.a"
}

# musl-gcc does not see the kernel headers: the linux-aio and io_uring
# backends drop out, epoll stays (it is what libev picks on Linux anyway).
build_libev() {
	unpack libev
	cd "$adir/work/libev"
	./configure --host="$triple" --build="$build_triple" --prefix="$deps" \
		--disable-shared --enable-static --disable-dependency-tracking \
		CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$LIBCFLAGS"
	make -j"$jobs" libev.la
	install -D -m644 ev.h "$deps/include/ev.h"
	install -D -m644 .libs/libev.a "$deps/lib/libev.a"
}

# Its Makefile adds -O3 through CFLAGS_FAST: replaced with ours.
build_http_parser() {
	unpack http-parser
	cd "$adir/work/http-parser"
	make package CC="$CC" AR="$AR" CFLAGS_FAST="$LIBCFLAGS -Wall -Wextra"
	install -D -m644 http_parser.h "$deps/include/http_parser.h"
	install -D -m644 libhttp_parser.a "$deps/lib/libhttp_parser.a"
}

# The tarball is upstream's git tag: the library lives in expat/ and has no
# configure script. As debian/rules does, buildconf.sh makes one (Debian's
# CVE backports test `#if XML_DTD == 1`, which only the autotools config
# header satisfies, so CMake is not an option). Only lib/ is built: no
# xmlwf, examples, tests or man page. XML_DTD stays on as in Debian's build
# (slipway refuses every DOCTYPE anyway); getrandom is found in musl.
build_expat() {
	unpack expat
	cd "$adir/work/expat/expat"
	./buildconf.sh
	./configure --host="$triple" --build="$build_triple" --prefix="$deps" \
		--disable-shared --enable-static --disable-dependency-tracking \
		--without-docbook --without-xmlwf --without-examples --without-tests \
		CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$LIBCFLAGS"
	grep -q '^#define HAVE_GETRANDOM 1' expat_config.h || die "expat: configure found no getrandom"
	make -j"$jobs" -C lib
	install -D -m644 -t "$deps/include" lib/expat.h lib/expat_external.h
	install -D -m644 lib/.libs/libexpat.a "$deps/lib/libexpat.a"
}

# ---- build the libraries, or take them from the cache ----

if [ -f "$deps/.complete" ]; then
	say "libraries: cached in ${deps#"$top"/}"
	# The cache may have moved (CI restores it elsewhere): musl's wrapper and
	# specs file hold absolute paths.
	old=$(cat "$deps/.complete")
	if [ "$old" != "$deps" ] && [ -d "$deps/musl" ]; then
		sed -i "s|$old|$deps|g" "$deps/musl/bin/musl-gcc" "$deps/musl/lib/musl-gcc.specs"
		echo "$deps" >"$deps/.complete"
	fi
else
	say "libraries: building into ${deps#"$top"/}"
	say "(key from cross/versions, cross/build.sh, $arch, $toolchain_id)"
	t_libs=$(date +%s.%N)
	rm -rf "$deps" "$adir/work"
	mkdir -p "$srcdir" "$deps"
	if [ "$arch" = x86_64 ]; then libs=(zlib mbedtls curl cjson libev http-parser expat)
	else libs=(musl zlib mbedtls curl cjson libev http-parser expat); fi
	missing=()
	for name in "${libs[@]}"; do [ -f "$(dsc_path "$name")" ] || missing+=("$name"); done
	if [ ${#missing[@]} -gt 0 ]; then
		t0=$(date +%s.%N)
		ensure_deb_src
		apt_update
		for name in "${missing[@]}"; do fetch_source "$name"; done
		say "apt-get source ${missing[*]}: $(elapsed "$t0")"
	fi
	for name in "${libs[@]}"; do fetch_source "$name"; done # checks the pinned versions
	for name in "${libs[@]}"; do step "$name" "build_${name//-/_}"; done
	echo "$deps" >"$deps/.complete"
	[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$adir/work"
	# Only the current key's libraries are kept.
	for d in "$adir"/deps-*; do [ "$d" = "$deps" ] || rm -rf "$d"; done
	say "libraries built: $(elapsed "$t_libs")"
fi

# ---- the agent ----

# The warnings and libraries are the main Makefile's own.
makevar() {
	local v
	v=$(sed -n "s/^$1[[:space:]]*[:?]*=[[:space:]]*//p" "$top/Makefile" | head -1)
	[ -n "$v" ] || die "Makefile: no $1 variable to take the flags from"
	echo "$v"
}
agent_cflags="$(makevar CSTD) -Os -ffunction-sections -fdata-sections $(makevar WARN)"
agent_libs=$(makevar LIBS_BASE)
# Sources that need libraries the agent does not link (libarchive, SQLite,
# libyaml: the coordinator's) stay out; if the agent needed one, the link fails.
exclude=$(grep -lE '^#include <(archive|archive_entry|sqlite3|yaml)\.h>' common/*.c agent/*.c |
	xargs echo || true)
obj=$adir/obj
stamp="$CC | $agent_cflags | $agent_libs | $deps | $exclude"
if [ "$(cat "$obj/.flags" 2>/dev/null)" != "$stamp" ]; then
	rm -rf "$obj"
	mkdir -p "$obj"
	echo "$stamp" >"$obj/.flags"
fi
[ -z "$exclude" ] || say "left out of the static agent: $exclude"
step agent make -f cross/agent.mk -j"$jobs" CC="$CC" AR="$AR" DEPS="$deps" OBJ="$obj" \
	BIN="$obj/slipway-agent" CFLAGS="$agent_cflags" LIBS="$agent_libs" EXCLUDE="$exclude"
bin=$adir/slipway-agent
$STRIP --strip-all -o "$bin.tmp" "$obj/slipway-agent"
mv -f "$bin.tmp" "$bin"

# ---- sizes and checks ----

size_of() { stat -c %s "$1"; }
kib() { awk -v b="$1" 'BEGIN { printf "%7.1f KiB", b / 1024 }'; }
say "what the stripped agent is made of (bytes in the file, from the link map):"
awk -f cross/sizes.awk "$obj/slipway-agent.map" | sort -t"$(printf '\t')" -k2 -nr |
	while IFS=$'\t' read -r what bytes; do
		printf '    %-26s %s\n' "$what" "$(kib "$bytes")"
	done | tee "$adir/sizes.txt"
say "library archives (${deps#"$top"/}/lib):"
for a in "$deps"/lib/*.a; do
	printf '    %-26s %s\n' "$(basename "$a")" "$(kib "$(size_of "$a")")"
done
bin_size=$(size_of "$bin")
budget_note=""
[ "$arch" = x86_64 ] && budget_note=", budget $BUDGET_BYTES bytes"
say "binary: ${bin#"$top"/}: $bin_size bytes ($(kib "$bin_size" | tr -d ' ')$budget_note)"
kind=$(file -b "$bin")
say "file: $kind"
case $kind in *"statically linked"*) ;; *) die "${bin#"$top"/} is not statically linked" ;; esac
if [ "$arch" = x86_64 ] && [ "$bin_size" -gt $BUDGET_BYTES ]; then
	die "${bin#"$top"/} is $bin_size bytes, over the budget of $BUDGET_BYTES"
fi
"${run[@]}" "$bin" selftest >"$adir/logs/selftest.log" 2>&1 ||
	{ cat "$adir/logs/selftest.log" >&2; die "${run[*]:+${run[*]} }$bin selftest failed"; }
say "${run[*]:+${run[*]} }${bin#"$top"/} selftest: $(tail -1 "$adir/logs/selftest.log")"
say "done in $(elapsed "$t_start")"
