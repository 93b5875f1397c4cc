#!/usr/bin/env bash
# The real slipway-coordinator binary, end to end: a real GitLab push payload
# (tests fixture, rewritten to name a commit of a repository made here) is
# posted to /hooks/gitlab/<id>; the coordinator fetches it over SSH from a local
# sshd with the app's deploy key, builds it with Docker, pushes it to the
# harness registry and makes a release, all visible through the /v1 API.
# Needs the environment of tests/integration/harness.sh (tests/run sources it).
set -u
top=${SLIPWAY_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${SLIPWAY_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
# shellcheck source=../lib/tap.sh
. "$top/tests/lib/tap.sh"
: "${SLIPWAY_TEST_REGISTRY:?run through tests/run (harness.sh up sets the environment)}"
fixtures=${SLIPWAY_FIXTURES:-$top/../shared/fixtures}

tap_plan 8
tmp=$(mktemp -d /tmp/slipway-e2e-XXXXXX)
app=e2e-$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')
coord_pid=""
sshd_pid=""
cleanup() {
	[ -z "$coord_pid" ] || { kill -TERM "$coord_pid" 2>/dev/null; wait "$coord_pid" 2>/dev/null; }
	[ -z "$sshd_pid" ] || { kill -TERM "$sshd_pid" 2>/dev/null; wait "$sshd_pid" 2>/dev/null; }
	ids=$(docker images -q --filter "label=slipway.app=$app" | sort -u)
	# shellcheck disable=SC2086
	[ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1
	rm -rf "$tmp"
}
trap cleanup EXIT
# jget EXPR: evaluates a Python expression over the JSON document d on stdin.
jget() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)" 2>/dev/null; }
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the git server: sshd on 127.0.0.1 with the deploy key, git-shell only ---
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -C deploy -f "$tmp/deploy_key"
printf 'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",no-port-forwarding,no-pty %s\n' \
	"$(cat "$tmp/deploy_key.pub")" >"$tmp/authorized_keys"
mkdir -p /run/sshd
ssh_port=$(free_port)
cat >"$tmp/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $ssh_port
HostKey $tmp/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AcceptEnv GIT_PROTOCOL
CONF
/usr/sbin/sshd -D -f "$tmp/sshd_config" -E "$tmp/sshd.log" </dev/null >/dev/null 2>&1 &
sshd_pid=$!
(
	set -e
	cd "$tmp"
	git init -q --bare repo/app.git
	git init -q -b master work
	cd work
	git config user.email t@example.com
	git config user.name test
	printf 'FROM %s\nCOPY app.txt /app.txt\n' "$SLIPWAY_TEST_BASE_IMAGE" >Dockerfile
	printf 'services:\n  web:\n    build: .\n    port: 8080\n    health: {path: /health}\n' \
		>slipway.yml
	echo e2e >app.txt
	git add -A
	git commit -qm e2e
	git push -q ../repo/app.git master
) || { tap_fail "repository"; exit 1; }
sha=$(git -C "$tmp/work" rev-parse HEAD)
url="ssh://root@127.0.0.1:$ssh_port$tmp/repo/app.git"

# --- the coordinator ---
port=$(free_port)
master=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
cat >"$tmp/c.conf" <<CONF
data.dir = $tmp/data
server.listen = 127.0.0.1:$port
agents.bootstrap_token = e2e-bootstrap-token-0123456789
secrets.master_key = $master
registry.host = $SLIPWAY_TEST_REGISTRY
docker.socket = ${SLIPWAY_DOCKER_SOCKET:-/var/run/docker.sock}
CONF
coord=$build/slipway-coordinator
key=$("$coord" --config "$tmp/c.conf" apikey create --name e2e --role admin 2>/dev/null | tail -1)
"$coord" --config "$tmp/c.conf" >"$tmp/coordinator.log" 2>&1 &
coord_pid=$!
api() { curl -s -H "Authorization: Bearer $key" "$@"; }
for _ in $(seq 200); do
	curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
	sleep 0.05
done
created=$(api -o /dev/null -w '%{http_code}' -X POST -d "{\"name\":\"$app\"}" \
	"http://127.0.0.1:$port/v1/apps")
hook=hk_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
"$build/tests/helpers/webhook_hook" --db "$tmp/data/coordinator.db" --master-key "$master" \
	--app "$app" --hook "$hook" --token "$token" --deploy-key "$tmp/deploy_key"
hooked=$?
tap_check "coordinator up, app $app created ($created), hook and deploy key set" \
	bash -c "[ '$created' = 201 ] && [ $hooked -eq 0 ]"

# --- the delivery: the real push fixture, naming our commit and repository ---
sed -e "s/2adc9465c4edfc33834e173fe89436a7cb899a1d/$sha/g" \
	-e "s#git@gitlab.com:gitlab-org/hello-world.git#$url#g" \
	"$fixtures/gitlab/push_hook.json" >"$tmp/push.json"
post() {
	curl -s -w '\n%{http_code}' -X POST -H 'X-Gitlab-Event: Push Hook' \
		-H "X-Gitlab-Token: $token" -H "Idempotency-Key: $1" \
		-H 'Content-Type: application/json' --data-binary @"$tmp/push.json" \
		"http://127.0.0.1:$port/hooks/gitlab/$hook"
}
answer=$(post e2e-1)
tap_check "the push is accepted: 202 ($(echo "$answer" | tr '\n' ' '))" \
	bash -c "[ '$(echo "$answer" | tail -1)' = 202 ]"

build_id=""
status=""
for _ in $(seq 3000); do
	builds=$(api "http://127.0.0.1:$port/v1/apps/$app/builds")
	build_id=$(echo "$builds" | jget 'd["builds"][0]["id"] if d["builds"] else ""')
	status=$(echo "$builds" | jget 'd["builds"][0]["status"] if d["builds"] else ""')
	case $status in complete | failed) break ;; esac
	sleep 0.1
done
info=$(api "http://127.0.0.1:$port/v1/builds/$build_id")
log=$(api "http://127.0.0.1:$port/v1/builds/$build_id/log")
tap_check "build $build_id of $sha is complete (status $status)" bash -c "[ '$status' = complete ]" ||
	true
[ "$status" = complete ] || echo "$log" | tail -30 | sed 's/^/#   /'
digest=$(echo "$info" | jget 'd["images"]["web"]["digest"]')
reg_digest=$(curl -s -o /dev/null -D - \
	-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
	"http://$SLIPWAY_TEST_REGISTRY/v2/$app/manifests/web.$build_id" |
	tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
tap_check "the image is in the registry with the recorded digest ($digest)" \
	bash -c "[ -n '$digest' ] && [ '$digest' = '$reg_digest' ]"
case $log in
*"fetch --no-tags"*"docker build of service web"*"pushed "*)
	tap_ok "the build log has git and docker lines" ;;
*) tap_fail "the build log has git and docker lines" "$(echo "$log" | tail -20)" ;;
esac
releases=$(api "http://127.0.0.1:$port/v1/apps/$app/releases")
case $releases in
*"\"build\":\"$build_id\""*) tap_ok "a release was made from $build_id" ;;
*) tap_fail "a release was made from $build_id" "$releases" ;;
esac
again=$(post e2e-1)
case $again in
*'"duplicate":true'*) tap_ok "the same delivery again is a duplicate" ;;
*) tap_fail "the same delivery again is a duplicate" "$again" ;;
esac
count=$(sqlite3 "$tmp/data/coordinator.db" "SELECT count(*) FROM builds")
tap_check "one build for two deliveries of one push (builds: $count)" bash -c "[ '$count' = 1 ]"
tap_done
