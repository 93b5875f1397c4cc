#!/usr/bin/env bash
# Integration test harness: a Docker engine, a private registry and the test image.
#
#   tests/integration/harness.sh up   ENVFILE BUILD_DIR
#   tests/integration/harness.sh down ENVFILE BUILD_DIR
#
# up makes sure dockerd answers (starting it if needed), starts a docker-registry
# on a free port of 127.0.0.1, builds testsrv (tests/images/testsrv.c) with
# musl-gcc -static, imports a busybox + testsrv rootfs as slipway-test/base:RUNID
# and pushes testsrv:v1 and :v2 to the registry. ENVFILE receives KEY=value lines
# for the tests (tests/run sources it with set -a) and the private state down
# needs. down removes everything labelled slipway.test=RUNID, the registry and
# its files, and stops dockerd if the harness started it. Both are idempotent;
# concurrent runs use their own RUNID, port and temp dir. A failed up cleans up
# after itself.
set -euo pipefail

usage() {
	echo "usage: $0 up|down ENVFILE BUILD_DIR" >&2
	exit 2
}
[ $# -eq 3 ] || usage
cmd=$1
envfile=$2
build=$3
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$build" "$(dirname "$envfile")"
build=$(cd "$build" && pwd)
envfile=$(cd "$(dirname "$envfile")" && pwd)/$(basename "$envfile")

sock=${SLIPWAY_DOCKER_SOCKET:-/var/run/docker.sock}
export DOCKER_HOST=unix://$sock
# Shared by every run on this machine: who is alive, and whether we started dockerd.
state=${SLIPWAY_HARNESS_STATE:-/tmp/slipway-harness}
mkdir -p "$state/runs"
STALE_AFTER=${SLIPWAY_HARNESS_STALE_AFTER:-3600} # seconds

say() { echo "harness: $*"; }
# docker_ok, alive, stop_pid, proc_start, free_port, testsrv_build, base_rootfs_tar
# shellcheck source=../lib/docker-env.sh
. "$top/tests/lib/docker-env.sh"
fail() {
	echo "harness: ERROR: $*" >&2
	exit 1
}

# A run is alive while the process that called up (tests/run, or your shell) lives.
# Its marker $state/runs/RUNID holds OWNER=pid:start plus a copy of ENVFILE.
run_alive() {
	local owner pid
	owner=$(sed -n 's/^OWNER=//p' "$state/runs/$1" 2>/dev/null) || return 1
	pid=${owner%%:*}
	alive "$pid" && [ "$(proc_start "$pid")" = "${owner#*:}" ]
}

# Everything down needs goes to ENVFILE as soon as it exists, so a half-done up
# can be undone.
save_env() {
	local tmp="$envfile.tmp.$$"
	{
		echo "SLIPWAY_DOCKER_SOCKET=$sock"
		echo "SLIPWAY_TEST_RUN_ID=$run_id"
		echo "SLIPWAY_TEST_LABEL=slipway.test=$run_id"
		echo "SLIPWAY_TEST_REGISTRY=${registry:-}"
		echo "SLIPWAY_TEST_IMAGE=${image_v1:-}"
		echo "SLIPWAY_TEST_IMAGE_V2=${image_v2:-}"
		echo "SLIPWAY_TEST_BASE_IMAGE=${base_image:-}"
		echo "SLIPWAY_TEST_TESTSRV=${testsrv:-}"
		echo "SLIPWAY_HARNESS_TMP=${tmp_dir:-}"
		echo "SLIPWAY_HARNESS_REGISTRY_PID=${registry_pid:-}"
		echo "SLIPWAY_HARNESS_STARTED_DOCKERD=${started_dockerd:-0}"
		echo "SLIPWAY_HARNESS_DOCKERD_PID=${dockerd_pid:-}"
	} >"$tmp"
	cp "$tmp" "$state/runs/$run_id.tmp"
	echo "OWNER=$owner" >>"$state/runs/$run_id.tmp"
	mv -f "$state/runs/$run_id.tmp" "$state/runs/$run_id"
	mv -f "$tmp" "$envfile"
}

ensure_docker() {
	started_dockerd=0
	exec 9>"$state/lock"
	flock -w 120 9 || fail "could not take $state/lock within 120 s"
	if docker_ok; then
		flock -u 9
		return
	fi
	local pid deadline=$((SECONDS + 60))
	pid=$(cat /var/run/docker.pid 2>/dev/null || true)
	if alive "$pid" dockerd; then
		say "dockerd (pid $pid) is starting; waiting for $sock"
	else
		command -v dockerd >/dev/null || fail "dockerd is not installed (make deps installs docker.io)"
		say "starting dockerd (log: $build/dockerd.log)"
		local args=()
		[ "$sock" = /var/run/docker.sock ] || args=(-H "unix://$sock")
		setsid dockerd "${args[@]}" </dev/null >>"$build/dockerd.log" 2>&1 9>&- &
		pid=$!
		dockerd_pid=$pid
		started_dockerd=1
		echo "$pid" >"$state/dockerd.pid"
		save_env
	fi
	while [ "$SECONDS" -lt "$deadline" ]; do
		docker_ok && break
		if [ "$started_dockerd" = 1 ] && ! alive "$pid"; then
			tail -20 "$build/dockerd.log" >&2 || true
			fail "dockerd exited during start-up (see $build/dockerd.log)"
		fi
		sleep 0.1
	done
	flock -u 9
	docker_ok || fail "Docker does not answer on $sock after 60 s (see $build/dockerd.log)"
	say "dockerd answers on $sock"
}

# Leftovers of crashed earlier runs (the runner was killed, down never ran): a run
# whose owner process is gone and whose marker is over an hour old is taken down
# from its marker (containers, images, registry, temp dir); then anything else
# labelled slipway.test=<id> that is over an hour old and belongs to no live run
# goes too. Live runs and unlabelled objects are never touched.
remove_stale() {
	local now kind marker id rid created age
	now=$(date +%s)
	for marker in "$state"/runs/*; do
		rid=${marker##*/}
		[[ $rid =~ ^[0-9a-f]+$ ]] || continue
		if [ "$rid" = "$run_id" ] || run_alive "$rid"; then continue; fi
		[ $((now - $(stat -c %Y "$marker"))) -gt "$STALE_AFTER" ] || continue
		say "taking down stale run $rid (its owner is gone)"
		(cmd_down "$marker") || true
		rm -f "$marker"
	done
	for kind in container network volume image; do
		local ids fmt
		case $kind in
		container)
			ids=$(docker ps -aq --filter label=slipway.test)
			fmt='{{.Id}} {{index .Config.Labels "slipway.test"}} {{.Created}}' ;;
		image)
			ids=$(docker images -q --filter label=slipway.test | sort -u)
			fmt='{{.Id}} {{index .Config.Labels "slipway.test"}} {{.Created}}' ;;
		network)
			ids=$(docker network ls -q --filter label=slipway.test)
			fmt='{{.Id}} {{index .Labels "slipway.test"}} {{.Created}}' ;;
		volume)
			ids=$(docker volume ls -q --filter label=slipway.test)
			fmt='{{.Name}} {{index .Labels "slipway.test"}} {{.CreatedAt}}' ;;
		esac
		[ -n "$ids" ] || continue
		# shellcheck disable=SC2086
		docker "$kind" inspect -f "$fmt" $ids 2>/dev/null | while read -r id rid created; do
			[ "$rid" != "$run_id" ] || continue
			run_alive "$rid" && continue
			age=$((now - $(date -d "$created" +%s 2>/dev/null || echo "$now")))
			[ "$age" -gt "$STALE_AFTER" ] || continue
			say "removing stale $kind ${id:0:12} of run $rid (${age}s old)"
			case $kind in
			container) docker rm -f -v "$id" >/dev/null || true ;;
			image) docker rmi -f "$id" >/dev/null || true ;;
			*) docker "$kind" rm "$id" >/dev/null || true ;;
			esac
		done || true # an object may vanish between listing and inspecting
	done
}

start_registry() {
	local port code deadline
	for _ in 1 2 3 4 5; do
		port=$(free_port)
		cat >"$tmp_dir/registry.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $tmp_dir/registry
		  delete:
		    enabled: true
		http:
		  addr: 127.0.0.1:$port
		EOF
		setsid docker-registry serve "$tmp_dir/registry.yml" \
			</dev/null >"$tmp_dir/registry.log" 2>&1 9>&- &
		registry_pid=$!
		registry=127.0.0.1:$port
		save_env
		deadline=$((SECONDS + 15))
		while [ "$SECONDS" -lt "$deadline" ]; do
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$registry/v2/" || true)
			[ "$code" = 200 ] && { say "registry answers on $registry (pid $registry_pid)"; return; }
			alive "$registry_pid" || break
			sleep 0.05
		done
		if ! alive "$registry_pid" && grep -q 'address already in use' "$tmp_dir/registry.log"; then
			say "port $port was taken meanwhile; trying another"
			continue
		fi
		stop_pid "$registry_pid" docker-registry 5
		tail -20 "$tmp_dir/registry.log" >&2 || true
		fail "docker-registry did not answer on $registry"
	done
	fail "docker-registry: no free port after 5 attempts"
}

build_testsrv() {
	mkdir -p "$build/images"
	testsrv=$build/images/testsrv
	testsrv_build "$top" "$testsrv"
	save_env
}

build_images() {
	base_rootfs_tar "$testsrv" "$tmp_dir/rootfs" "$tmp_dir/rootfs.tar"

	# base keeps testsrv's default RELEASE ("dev"); v1 and v2 default RELEASE to
	# their tag so they differ in digest (RELEASE in a container's env wins).
	local common=("${BASE_IMAGE_CHANGES[@]}" --change "LABEL slipway.test=$run_id")
	base_image=slipway-test/base:$run_id
	image_v1=$registry/slipway-test/testsrv:v1
	image_v2=$registry/slipway-test/testsrv:v2
	save_env
	docker import "${common[@]}" "$tmp_dir/rootfs.tar" "$base_image" >/dev/null
	local tag ref
	for tag in v1 v2; do
		ref=$registry/slipway-test/testsrv:$tag
		docker import "${common[@]}" --change "ENV RELEASE=$tag" \
			"$tmp_dir/rootfs.tar" "$ref" >/dev/null
		docker push "$ref" >"$tmp_dir/push-$tag.log" 2>&1 ||
			{ cat "$tmp_dir/push-$tag.log" >&2; fail "docker push $ref failed"; }
		# Untagged locally, so a test that uses it really pulls from the registry.
		docker rmi "$ref" >/dev/null
	done
	say "images: $base_image (local), $image_v1, $image_v2 (registry)"
}

# A failed up removes what it made: tests/run does not call down after a failed up.
up_exit() {
	local rc=$?
	[ "$rc" -eq 0 ] && return
	say "up failed (exit $rc); cleaning up"
	exec 9>&- # drop the state lock if the failure came while holding it
	(cmd_down "$envfile") || true
	exit "$rc"
}

cmd_up() {
	local t0=$SECONDS old
	owner=$PPID:$(proc_start "$PPID")
	if [ -f "$envfile" ]; then
		old=$(sed -n 's/^SLIPWAY_TEST_RUN_ID=//p' "$envfile")
		if run_alive "$old" && ! grep -qx "OWNER=$owner" "$state/runs/$old"; then
			fail "$envfile belongs to run $old, whose owner ($(sed -n 's/^OWNER=//p' \
				"$state/runs/$old")) still runs; use another ENVFILE/BUILD_DIR"
		fi
		say "$envfile exists: taking down that run first"
		cmd_down "$envfile"
	fi
	run_id=$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')
	save_env
	trap up_exit EXIT
	ensure_docker
	remove_stale
	tmp_dir=$(mktemp -d "$build/harness-$run_id.XXXXXX")
	save_env
	start_registry
	build_testsrv
	build_images
	save_env
	trap - EXIT
	say "up: run $run_id ready in $((SECONDS - t0)) s; environment in $envfile"
}

# cmd_down FILE: FILE is an ENVFILE or a run marker (same format).
cmd_down() {
	local file=$1
	if [ ! -f "$file" ]; then
		say "down: no $file; nothing to do"
		return 0
	fi
	local SLIPWAY_TEST_RUN_ID="" SLIPWAY_HARNESS_TMP="" SLIPWAY_HARNESS_REGISTRY_PID=""
	local SLIPWAY_TEST_BASE_IMAGE="" SLIPWAY_TEST_IMAGE=""
	local SLIPWAY_TEST_IMAGE_V2="" left="" ids kind
	# shellcheck disable=SC1090
	. "$file"
	local rid=$SLIPWAY_TEST_RUN_ID label=slipway.test=$SLIPWAY_TEST_RUN_ID
	[[ $rid =~ ^[0-9a-f]+$ ]] || fail "down: $file has no valid SLIPWAY_TEST_RUN_ID"
	if docker_ok; then
		ids=$(docker ps -aq --filter "label=$label")
		# shellcheck disable=SC2086
		[ -z "$ids" ] || docker rm -f -v $ids >/dev/null || true
		ids=$(docker network ls -q --filter "label=$label")
		# shellcheck disable=SC2086
		[ -z "$ids" ] || docker network rm $ids >/dev/null || true
		ids=$(docker volume ls -q --filter "label=$label")
		# shellcheck disable=SC2086
		[ -z "$ids" ] || docker volume rm -f $ids >/dev/null || true
		local ref
		for ref in "$SLIPWAY_TEST_BASE_IMAGE" "$SLIPWAY_TEST_IMAGE" "$SLIPWAY_TEST_IMAGE_V2"; do
			[ -z "$ref" ] || docker rmi -f "$ref" >/dev/null 2>&1 || true
		done
		# Also images pulled or built from ours: they inherit the label.
		ids=$(docker images -q --filter "label=$label" | sort -u)
		# shellcheck disable=SC2086
		[ -z "$ids" ] || docker rmi -f $ids >/dev/null || true
		for kind in "ps -aq" "network ls -q" "volume ls -q" "images -q"; do
			# shellcheck disable=SC2086
			ids=$(docker $kind --filter "label=$label")
			[ -z "$ids" ] || left="$left ${kind%% *}:${ids//$'\n'/,}"
		done
	else
		say "down: Docker does not answer on $sock; skipping Docker clean-up"
	fi
	stop_pid "$SLIPWAY_HARNESS_REGISTRY_PID" docker-registry 10
	case $SLIPWAY_HARNESS_TMP in
	/*/harness-"$rid".*) rm -rf "$SLIPWAY_HARNESS_TMP" ;;
	esac
	rm -f "$state/runs/$rid"

	# dockerd goes when the harness started it and no other run still uses it.
	exec 9>"$state/lock"
	flock -w 120 9 || fail "could not take $state/lock within 120 s"
	local pid others=0 marker
	pid=$(cat "$state/dockerd.pid" 2>/dev/null || true)
	if [ -n "$pid" ] && ! alive "$pid" dockerd; then
		rm -f "$state/dockerd.pid"
	elif [ -n "$pid" ]; then
		for marker in "$state"/runs/*; do
			[ -f "$marker" ] && run_alive "${marker##*/}" && others=$((others + 1))
		done
		if [ "$others" -eq 0 ]; then
			say "down: stopping dockerd (pid $pid), which the harness started"
			stop_pid "$pid" dockerd 30
			rm -f "$state/dockerd.pid"
		else
			say "down: leaving dockerd running for $others other run(s)"
		fi
	fi
	flock -u 9
	rm -f "$file"
	[ -z "$left" ] || fail "down: could not remove$left"
	say "down: run $rid removed"
}

case $cmd in
up) cmd_up ;;
down) cmd_down "$envfile" ;;
*) usage ;;
esac
