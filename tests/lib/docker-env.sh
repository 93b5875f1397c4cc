# shellcheck shell=bash
# Shell functions shared by the integration harness (tests/integration/harness.sh)
# and the demo (examples/demo.sh): both bring up the same Docker environment
# without internet access, so both build the base image the same way here.
#
#   . "$top/tests/lib/docker-env.sh"
#
# The sourcing script defines say MESSAGE (used for progress lines) and may set
# sock (the Docker socket; /var/run/docker.sock by default). Nothing here exits
# or changes shell options; every function returns non-zero on failure.

# docker_ok: dockerd answers on $sock.
docker_ok() {
	curl -sf --max-time 3 --unix-socket "${sock:-/var/run/docker.sock}" \
		http://docker/_ping >/dev/null 2>&1
}

# alive PID [NAME]: the process runs (zombies count as gone) and, if NAME is
# given, its command line mentions NAME (guards against a recycled pid).
alive() {
	local pid=$1 name=${2:-} st
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
	st=$(sed -E 's/^.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
	[ "$st" != Z ] || return 1
	[ -z "$name" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# stop_pid PID NAME SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
	local pid=$1 name=$2 i
	alive "$pid" "$name" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < $3 * 10; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	say "$name (pid $pid) ignored SIGTERM for $3 s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

# The start time of a process (clock ticks since boot), to tell a pid from its reuse.
proc_start() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# testsrv_build TOP OUT: the test server (tests/images/testsrv.c), static with
# musl. Compiled aside and renamed, so concurrent runs never see half a binary.
testsrv_build() {
	musl-gcc -static -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Wshadow \
		-Wmissing-prototypes -Wstrict-prototypes \
		-o "$2.$$" "$1/tests/images/testsrv.c" && mv -f "$2.$$" "$2"
}

# base_rootfs_tar TESTSRV DIR TAR: the base image's root file system (Debian's
# static busybox with a few applets, /testsrv, passwd and group) built in DIR
# and archived as TAR, owned by root, for `docker import`.
base_rootfs_tar() {
	local testsrv=$1 root=$2 tar=$3 app
	mkdir -p "$root/bin" "$root/etc" "$root/tmp" || return 1
	chmod 1777 "$root/tmp"
	cp /bin/busybox "$root/bin/busybox" || return 1
	for app in sh ls cat sleep wget nc echo env true false; do
		ln -sf busybox "$root/bin/$app"
	done
	cp "$testsrv" "$root/testsrv" || return 1
	printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
	tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tar" .
}

# The `docker import` changes every image made from that root file system gets
# (add a LABEL of your own to find what you made).
# shellcheck disable=SC2034
BASE_IMAGE_CHANGES=(--change 'CMD ["/testsrv"]' --change 'EXPOSE 8080')
