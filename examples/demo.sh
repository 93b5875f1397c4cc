#!/usr/bin/env bash
# The demo: a push to a git repository becomes a zero-downtime release on the
# local Docker engine, with every piece of slipway running for real.
#
#   examples/demo.sh up   [BUILD_DIR]   (make demo: after make deps and make all)
#   examples/demo.sh down [BUILD_DIR]   (make demo-down)
#   examples/demo.sh push [BUILD_DIR]   push .demo/hello's commits and post the
#                                       Push Hook, as GitLab would
#
# up starts dockerd (if it is not running), a docker-registry, the base image,
# slipway-coordinator and one slipway-agent, an sshd serving the app's git
# repository to the app's deploy key, and a stand-in for GitLab's REST API
# while the app is linked; then it posts two GitLab Push Hooks and swaps the
# second release in under load. Everything lives under .demo/ in the
# repository; .demo/state lists what up started, and down removes exactly that
# (processes by pid, Docker objects by the label slipway.demo=<id>). Run as
# root on Debian 12 (docs/demo.md).
set -Eeuo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
build=${2:-build}
case $build in /*) ;; *) build=$top/$build ;; esac
demo=$top/.demo
statefile=$demo/state
sock=${SLIPWAY_DOCKER_SOCKET:-/var/run/docker.sock}
export DOCKER_HOST=unix://$sock
fixtures=${SLIPWAY_FIXTURES:-$top/../shared/fixtures}

say() { echo "    $*"; }
# docker_ok, alive, stop_pid, proc_start, free_port, testsrv_build, base_rootfs_tar
# shellcheck source=../tests/lib/docker-env.sh
. "$top/tests/lib/docker-env.sh"

# Bold headings and dim command lines on a terminal only.
if [ -t 1 ]; then
	B=$'\033[1m' D=$'\033[2m' R=$'\033[1;31m' N=$'\033[0m'
else
	B="" D="" R="" N=""
fi
t0=$SECONDS
nstep=0
step() {
	nstep=$((nstep + 1))
	printf '\n%s==> %d. %s%s  (%ds)\n' "$B" "$nstep" "$*" "$N" "$((SECONDS - t0))"
}
# show CMD...: prints the command as a user would type it, then runs it.
show() {
	local shown=("$@")
	shown[0]=${shown[0]##*/}
	printf '%s$ %s%s\n' "$D" "${shown[*]}" "$N"
	"$@"
}

# The log of the component the current step is about: shown when it fails.
comp_log=""
comp_name=""
component() {
	comp_name=$1
	comp_log=$2
}

die() {
	trap - ERR
	if [ "$BASH_SUBSHELL" -gt 0 ]; then # inside $(...): the caller reports it
		echo "demo: ERROR: $*" >&2
		exit 1
	fi
	echo >&2
	echo "demo: ERROR: $*" >&2
	if [ -n "$comp_log" ] && [ -s "$comp_log" ]; then
		echo "demo: the last lines of the $comp_name log ($comp_log; successful requests left out):" >&2
		grep -vE ' http\.request .* status=2[0-9][0-9] ' "$comp_log" | tail -n 40 |
			sed 's/^/    | /' >&2
	fi
	if [ "$cmd" = up ]; then
		echo "demo: what started so far is still running, for a look; \`make demo-down\` removes it." >&2
	fi
	exit 1
}
trap 'die "line $LINENO: \`$BASH_COMMAND\` failed (exit $?)"' ERR
trap 'die "interrupted"' INT TERM

# wait_until SECONDS WHAT CMD...: polls CMD every 100 ms until it succeeds.
wait_until() {
	local secs=$1 what=$2
	local deadline=$((SECONDS + secs))
	shift 2
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || die "$what: not within $secs s"
		sleep 0.1
	done
}

# port_free PORT: nothing listens on PORT (on any address).
port_free() {
	python3 - "$1" <<-'EOF'
	import socket, sys
	s = socket.socket()
	s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
	try:
	    s.bind(("0.0.0.0", int(sys.argv[1])))
	except OSError:
	    sys.exit(1)
	EOF
}
# pick_port PREFERRED: PREFERRED when it is free, else any free port.
pick_port() {
	if port_free "$1"; then echo "$1"; else free_port; fi
}

# jq-like: jget EXPR evaluates a Python expression over the JSON document d on stdin.
jget() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# ---- state: what up started, written as soon as it exists (down reads it) ----

STATE_KEYS=(DEMO_ID STARTED_DOCKERD DOCKERD_PID REGISTRY REGISTRY_PID BASE_IMAGE SSHD_PID
	SSH_PORT REPO_URL GITLAB_PID COORD_PID COORD_PORT AGENT_PID PROXY_PID PROXY_PORT WRK_PID
	PROJECT_ID HOOK_URL HOOK_TOKEN)
save_state() {
	local k
	(
		umask 077
		for k in "${STATE_KEYS[@]}"; do
			printf '%s=%q\n' "$k" "${!k:-}"
		done >"$statefile.tmp"
	)
	mv -f "$statefile.tmp" "$statefile"
}
load_state() {
	local k
	for k in "${STATE_KEYS[@]}"; do
		printf -v "$k" '%s' ""
	done
	# shellcheck disable=SC1090
	[ ! -f "$statefile" ] || . "$statefile"
}

slipway() { "$build/slipway" "$@"; }

# ---- up, step by step ----

check_tools() {
	step "Preflight: slipway is built, the Debian packages are there"
	local missing="" t b
	[ "$(id -u)" = 0 ] || die "run the demo as root: it starts dockerd and an sshd"
	for t in dockerd docker docker-registry musl-gcc /usr/sbin/sshd ssh-keygen git git-shell \
		wrk python3 curl tar; do
		command -v "$t" >/dev/null || missing="$missing $t"
	done
	[ -x /bin/busybox ] || missing="$missing busybox-static"
	[ -z "$missing" ] || die "missing:$missing (\`make deps\` installs them)"
	for b in slipway-coordinator slipway-agent slipway; do
		[ -x "$build/$b" ] || die "no $build/$b: run \`make all\` first"
		say "$build/$b"
	done
}

start_docker() {
	step "Docker engine"
	component dockerd "$demo/dockerd.log"
	if docker_ok; then
		say "dockerd already answers on $sock: using it (the demo will leave it running)"
		return
	fi
	local pid="" deadline=$((SECONDS + 60)) args=()
	[ "$sock" != /var/run/docker.sock ] || pid=$(cat /var/run/docker.pid 2>/dev/null || true)
	if alive "${pid:-}" dockerd; then
		say "dockerd (pid $pid) is starting; waiting for $sock"
	else
		say "starting dockerd (log: .demo/dockerd.log)"
		[ "$sock" = /var/run/docker.sock ] || args=(-H "unix://$sock")
		setsid dockerd "${args[@]}" </dev/null >>"$demo/dockerd.log" 2>&1 &
		DOCKERD_PID=$!
		STARTED_DOCKERD=1
		save_state
	fi
	while ! docker_ok; do
		[ "$SECONDS" -lt "$deadline" ] || die "Docker does not answer on $sock after 60 s"
		if [ "$STARTED_DOCKERD" = 1 ] && ! alive "$DOCKERD_PID"; then
			die "dockerd exited during start-up"
		fi
		sleep 0.1
	done
	say "dockerd answers on $sock (pid ${DOCKERD_PID:-$pid}; \`make demo-down\` stops it again)"
}

start_registry() {
	step "Docker registry on 127.0.0.1"
	component docker-registry "$demo/registry.log"
	local port code deadline
	for _ in 1 2 3 4 5; do
		port=$(free_port)
		cat >"$demo/registry.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $demo/registry
		  delete:
		    enabled: true
		http:
		  addr: 127.0.0.1:$port
		EOF
		setsid docker-registry serve "$demo/registry.yml" </dev/null >"$demo/registry.log" 2>&1 &
		REGISTRY_PID=$!
		REGISTRY=127.0.0.1:$port
		save_state
		deadline=$((SECONDS + 15))
		while [ "$SECONDS" -lt "$deadline" ] && alive "$REGISTRY_PID"; do
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REGISTRY/v2/" || true)
			if [ "$code" = 200 ]; then
				say "docker-registry answers on $REGISTRY (pid $REGISTRY_PID)"
				return
			fi
			sleep 0.05
		done
		alive "$REGISTRY_PID" || ! grep -q 'address already in use' "$demo/registry.log" ||
			continue
		die "docker-registry did not answer on $REGISTRY"
	done
	die "docker-registry: no free port after 5 attempts"
}

build_base_image() {
	step "Base image: busybox + testsrv, imported (nothing can be pulled here)"
	component "base image" "$demo/base-image.log"
	mkdir -p "$demo/images"
	testsrv_build "$top" "$demo/images/testsrv" >>"$demo/base-image.log" 2>&1 ||
		die "musl-gcc could not build tests/images/testsrv.c"
	base_rootfs_tar "$demo/images/testsrv" "$demo/images/rootfs" "$demo/images/rootfs.tar" \
		>>"$demo/base-image.log" 2>&1 || die "could not make the base image's root file system"
	BASE_IMAGE=slipway-demo/base:latest
	save_state
	docker import "${BASE_IMAGE_CHANGES[@]}" --change "LABEL slipway.demo=$DEMO_ID" \
		"$demo/images/rootfs.tar" "$BASE_IMAGE" >>"$demo/base-image.log" 2>&1 ||
		die "docker import failed"
	say "$BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" |
		awk '{printf "%.1f MB", $1 / 1e6}'); the same image the integration tests use)"
}

start_coordinator() {
	step "slipway-coordinator"
	component slipway-coordinator "$demo/coordinator.log"
	mkdir -p "$demo/coordinator"
	chmod 700 "$demo/coordinator"
	COORD_PORT=$(pick_port 8700)
	BOOT_TOKEN=$(rand_hex 24)
	(
		umask 077
		rand_hex 32 >"$demo/coordinator/master.key"
		cat >"$demo/coordinator.conf" <<-EOF
		# written by examples/demo.sh
		data.dir = "$demo/coordinator"
		server.listen = "127.0.0.1:$COORD_PORT"
		server.public_url = "http://127.0.0.1:$COORD_PORT"
		agents.bootstrap_token = "$BOOT_TOKEN"
		secrets.master_key_path = "$demo/coordinator/master.key"
		registry.host = "$REGISTRY"
		docker.socket = "$sock"
		log.level = "info"
		EOF
	)
	say "data in .demo/coordinator; a new master key and agent bootstrap token"
	(
		umask 077
		"$build/slipway-coordinator" --config "$demo/coordinator.conf" apikey create \
			--name demo --role admin 2>>"$demo/coordinator.log" | tail -1 >"$demo/api-key"
	)
	grep -q '^slw_' "$demo/api-key" || die "slipway-coordinator apikey create failed"
	say "API key \"demo\" (role admin) made with \`slipway-coordinator apikey create\`: .demo/api-key"
	setsid "$build/slipway-coordinator" --config "$demo/coordinator.conf" \
		</dev/null >>"$demo/coordinator.log" 2>&1 &
	COORD_PID=$!
	save_state
	local deadline=$((SECONDS + 15))
	until curl -sf --max-time 2 "http://127.0.0.1:$COORD_PORT/v1/health" >/dev/null 2>&1; do
		alive "$COORD_PID" || die "slipway-coordinator exited during start-up"
		[ "$SECONDS" -lt "$deadline" ] || die "slipway-coordinator does not answer after 15 s"
		sleep 0.05
	done
	export SLIPWAY_HOST=http://127.0.0.1:$COORD_PORT
	SLIPWAY_API_KEY=$(cat "$demo/api-key")
	export SLIPWAY_API_KEY
	say "listening on $SLIPWAY_HOST (pid $COORD_PID, log .demo/coordinator.log)"
}

start_agent() {
	step "slipway-agent, with its proxy"
	component slipway-agent "$demo/agent.log"
	PROXY_PORT=$(pick_port 8080)
	mkdir -p "$demo/agent"
	chmod 700 "$demo/agent"
	(
		umask 077
		cat >"$demo/agent.conf" <<-EOF
		# written by examples/demo.sh
		coordinator.url = "http://127.0.0.1:$COORD_PORT"
		coordinator.bootstrap_token = "$BOOT_TOKEN"
		coordinator.retry_base = "200ms"
		coordinator.retry_cap = "2s"
		agent.instance_id = "demo-$(hostname -s 2>/dev/null || echo local)"
		agent.state_dir = "$demo/agent"
		agent.inventory_interval = "5s"
		docker.socket = "$sock"
		docker.network = "slipway-demo"
		deploy.labels = "slipway.demo=$DEMO_ID"
		deploy.name_prefix = "demo"
		deploy.min_free_disk = "256M"
		deploy.drain_timeout = "10s"
		proxy.bind = "127.0.0.1"
		proxy.stop_timeout = "5s"
		log.level = "info"
		EOF
	)
	setsid "$build/slipway-agent" --config "$demo/agent.conf" </dev/null >>"$demo/agent.log" 2>&1 &
	AGENT_PID=$!
	save_state
	local deadline=$((SECONDS + 20))
	until slipway agents --json 2>/dev/null | grep -q '"state": *"live"'; do
		alive "$AGENT_PID" || die "slipway-agent exited during start-up"
		[ "$SECONDS" -lt "$deadline" ] || die "slipway-agent did not register within 20 s"
		sleep 0.1
	done
	PROXY_PID=$(proxy_pid)
	save_state
	show slipway agents
	say "the app's public port will be 127.0.0.1:$PROXY_PORT (the proxy, pid ${PROXY_PID:-?})"
}

# The pid of the agent's proxy process, from its control socket.
proxy_pid() {
	curl -s --max-time 2 --unix-socket "$demo/agent/proxy.sock" http://proxy/v1/health 2>/dev/null |
		python3 -c 'import json, sys; print(json.load(sys.stdin).get("pid", ""))' 2>/dev/null || true
}

# git with no system or global configuration of this machine's users.
dgit() { GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git "$@"; }

make_repository() {
	step "The app's git repository, made from examples/hello"
	component git "$demo/git.log"
	dgit init -q --bare -b main "$demo/git/hello.git" >>"$demo/git.log" 2>&1
	dgit clone -q "$demo/git/hello.git" "$demo/hello" >>"$demo/git.log" 2>&1
	dgit -C "$demo/hello" symbolic-ref HEAD refs/heads/main
	dgit -C "$demo/hello" config user.name "Demo Developer"
	dgit -C "$demo/hello" config user.email demo@example.com
	cp -R "$top/examples/hello/." "$demo/hello/"
	if [ "$PROXY_PORT" != 8080 ]; then
		sed -i "s/listen: 8080}/listen: $PROXY_PORT}/" "$demo/hello/slipway.yml"
		say "port 8080 is taken here: slipway.yml's proxy listens on $PROXY_PORT instead"
	fi
	dgit -C "$demo/hello" add -A
	dgit -C "$demo/hello" commit -q -m "Say hello from v1"
	dgit -C "$demo/hello" push -q origin main >>"$demo/git.log" 2>&1
	say "bare repository .demo/git/hello.git (what GitLab would hold), working clone .demo/hello:"
	dgit -C "$demo/hello" log --format='      %h %s' -1
	dgit -C "$demo/hello" ls-files | sed 's/^/        /'
}

start_sshd() {
	step "sshd on 127.0.0.1, serving the repository (git-shell, only the app's deploy key)"
	component sshd "$demo/sshd.log"
	local d=$demo/ssh
	mkdir -p "$d" /run/sshd
	chmod 700 "$d"
	ssh-keygen -q -t ed25519 -N '' -C slipway-demo-host -f "$d/host_key"
	: >"$d/authorized_keys"
	SSH_PORT=$(free_port)
	cat >"$d/sshd_config" <<-EOF
	# written by examples/demo.sh: git over SSH for the demo's repository only
	ListenAddress 127.0.0.1
	Port $SSH_PORT
	HostKey $d/host_key
	AuthorizedKeysFile $d/authorized_keys
	PidFile $d/sshd.pid
	AllowUsers root
	PermitRootLogin prohibit-password
	StrictModes no
	UsePAM no
	PasswordAuthentication no
	KbdInteractiveAuthentication no
	DisableForwarding yes
	PermitTTY no
	AcceptEnv GIT_PROTOCOL
	LogLevel VERBOSE
	EOF
	/usr/sbin/sshd -t -f "$d/sshd_config" >>"$demo/sshd.log" 2>&1 || die "sshd -t refused the config"
	setsid /usr/sbin/sshd -D -f "$d/sshd_config" -E "$demo/sshd.log" </dev/null >/dev/null 2>&1 &
	SSHD_PID=$!
	REPO_URL=ssh://root@127.0.0.1:$SSH_PORT$demo/git/hello.git
	save_state
	local deadline=$((SECONDS + 10))
	until (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null; do
		alive "$SSHD_PID" || die "sshd exited during start-up"
		[ "$SECONDS" -lt "$deadline" ] || die "sshd does not accept connections after 10 s"
		sleep 0.05
	done
	say "$REPO_URL (pid $SSHD_PID); no key is authorized yet"
}

create_and_link_app() {
	step "The app hello, linked to its GitLab project"
	component slipway-coordinator "$demo/coordinator.log"
	show slipway apps create hello
	# No GitLab here: its REST API is played by the fake the integration tests
	# use, which records what slipway registers (the deploy key, the webhook).
	local gl_token gl_port
	PROJECT_ID=4242
	gl_token=glpat-demo-$(rand_hex 10)
	(
		umask 077
		echo "$gl_token" >"$demo/gitlab-token"
	)
	rm -f "$demo/gitlab.stdin"
	mkfifo "$demo/gitlab.stdin"
	# The fake exits at EOF on stdin: hold the FIFO open for writing (it holds it too).
	exec 8<>"$demo/gitlab.stdin"
	python3 "$top/tests/fakes/gitlab.py" --token "$gl_token" \
		--project "demo/hello:$PROJECT_ID:main:$REPO_URL" \
		<&8 >"$demo/gitlab.port" 2>"$demo/gitlab.log" &
	GITLAB_PID=$!
	exec 8>&-
	save_state
	component "GitLab stand-in" "$demo/gitlab.log"
	wait_until 10 "the GitLab stand-in did not start" grep -q . "$demo/gitlab.port"
	gl_port=$(head -1 "$demo/gitlab.port")
	say "GitLab's REST API: this machine has no GitLab, so tests/fakes/gitlab.py stands in"
	say "on http://127.0.0.1:$gl_port (project demo/hello, id $PROJECT_ID, default branch main,"
	say "ssh_url_to_repo $REPO_URL)"
	component slipway-coordinator "$demo/coordinator.log"
	show slipway apps link hello --gitlab-url "http://127.0.0.1:$gl_port" --project demo/hello \
		--token-file "$demo/gitlab-token"
	# What GitLab holds now: the deploy key it would accept for clones, and the
	# webhook (URL and secret token) it would call on every push.
	curl -s "http://127.0.0.1:$gl_port/_control" >"$demo/gitlab-state.json"
	local key
	key=$(jget "d['keys']['$PROJECT_ID'][0]['key']" <"$demo/gitlab-state.json")
	HOOK_URL=$(jget "d['hooks']['$PROJECT_ID'][0]['url']" <"$demo/gitlab-state.json")
	HOOK_TOKEN=$(jget "d['hooks']['$PROJECT_ID'][0]['token']" <"$demo/gitlab-state.json")
	save_state
	# shellcheck disable=SC2016 # sshd expands $SSH_ORIGINAL_COMMAND
	printf 'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",no-port-forwarding,no-pty %s\n' \
		"$key" >"$demo/ssh/authorized_keys"
	stop_pid "$GITLAB_PID" gitlab.py 5
	GITLAB_PID=""
	save_state
	rm -f "$demo/gitlab.stdin" "$demo/gitlab-token"
	say "the deploy key the coordinator made ($(ssh-keygen -lf /dev/stdin <<<"$key" |
		awk '{print $2}')) is now the only key sshd accepts"
	say "webhook: POST ${HOOK_URL%/*}/… with X-Gitlab-Token (secret, in .demo/state)"
}

# push_payload BEFORE AFTER OUT: the Push Hook GitLab sends for a push of
# BEFORE..AFTER to main of demo/hello, field for field (GitLab's "Push events"
# format; checked against the recorded push_hook.json fixture when present).
push_payload() {
	GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null python3 - "$demo/hello" "$1" "$2" \
		"$REPO_URL" "$PROJECT_ID" "$3" "$fixtures/gitlab/push_hook.json" <<-'EOF'
	import json, os, subprocess, sys
	repo, before, after, ssh_url, pid, out, fixture = sys.argv[1:]
	pid = int(pid)
	web = "http://gitlab.localhost/demo/hello"

	def git(*args):
	    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
	                          text=True).stdout

	zero = "0" * 40
	span = after if before == zero else before + ".." + after
	shas = git("rev-list", "--reverse", "--max-count=20", span).split()
	total = len(git("rev-list", span).split())
	commits = []
	for sha in shas:
	    msg, ts, name, email = git("show", "-s", "--format=%B%x00%aI%x00%an%x00%ae", sha).split("\0")
	    changes = {"A": [], "M": [], "D": []}
	    for line in git("diff-tree", "--no-commit-id", "--name-status", "-r", "--root", sha).splitlines():
	        st, path = line.split("\t", 1)
	        changes.setdefault(st[0], []).append(path)
	    commits.append({"id": sha, "message": msg.rstrip("\n") + "\n", "timestamp": ts,
	                    "url": f"{web}/-/commit/{sha}",
	                    "author": {"name": name, "email": email.strip()},
	                    "added": changes["A"], "modified": changes["M"], "removed": changes["D"]})
	user = git("config", "user.name").strip()
	project = {"id": pid, "name": "hello", "description": "slipway demo app",
	           "web_url": web, "avatar_url": None, "git_ssh_url": ssh_url,
	           "git_http_url": web + ".git", "namespace": "demo", "visibility_level": 0,
	           "path_with_namespace": "demo/hello", "default_branch": "main",
	           "ci_config_path": None, "homepage": web, "url": ssh_url, "ssh_url": ssh_url,
	           "http_url": web + ".git"}
	doc = {"object_kind": "push", "event_name": "push", "before": before, "after": after,
	       "ref": "refs/heads/main", "checkout_sha": after, "message": None, "user_id": 1,
	       "user_name": user, "user_username": "demo", "user_email": "demo@example.com",
	       "user_avatar": None, "project_id": pid, "project": project,
	       "commits": commits, "total_commits_count": total,
	       "repository": {"name": "hello", "url": ssh_url, "description": "slipway demo app",
	                      "homepage": web, "git_http_url": web + ".git",
	                      "git_ssh_url": ssh_url, "visibility_level": 0}}
	with open(out, "w") as f:
	    json.dump(doc, f, indent=2)

	def shape(v):  # the keys, at every level (lists: of their first object)
	    if isinstance(v, dict):
	        return {k: shape(x) for k, x in v.items()}
	    if isinstance(v, list):
	        return [shape(v[0])] if v and isinstance(v[0], dict) else "list"
	    return None

	if os.path.exists(fixture):
	    with open(fixture) as f:
	        same = shape(json.load(f)) == shape(doc)
	    print("same fields as GitLab's recorded push_hook.json" if same else
	          "WARNING: the fields differ from GitLab's recorded push_hook.json")
	EOF
}

# post_push BEFORE AFTER: posts the Push Hook as GitLab does (its headers, the
# webhook's secret token) and prints the coordinator's answer.
post_push() {
	local n out answer code uuid note
	n=$(find "$demo" -maxdepth 1 -name 'push-*.json' | wc -l)
	out=$demo/push-$((n + 1)).json
	note=$(push_payload "$1" "$2" "$out")
	uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
	say "Push Hook: ref refs/heads/main, checkout_sha ${2:0:12}, $(jget 'len(d["commits"])' <"$out") commit(s)"
	say "  (.demo/${out##*/}${note:+; $note})"
	printf '%s$ curl -X POST %s -H "X-Gitlab-Event: Push Hook" -H "X-Gitlab-Token: …" --data @.demo/%s%s\n' \
		"$D" "$HOOK_URL" "${out##*/}" "$N"
	answer=$(curl -s -w '\n%{http_code}' -X POST \
		-H 'Content-Type: application/json' -H 'User-Agent: GitLab/17.5.0' \
		-H 'X-Gitlab-Event: Push Hook' -H "X-Gitlab-Token: $HOOK_TOKEN" \
		-H "X-Gitlab-Event-UUID: $uuid" -H "Idempotency-Key: $uuid" \
		-H "X-Gitlab-Webhook-UUID: $(python3 -c 'import uuid; print(uuid.uuid4())')" \
		-H 'X-Gitlab-Instance: http://gitlab.localhost' \
		--data-binary @"$out" "$HOOK_URL") || die "could not post to $HOOK_URL"
	code=$(tail -1 <<<"$answer")
	say "HTTP $code $(head -1 <<<"$answer")"
	[ "$code" = 202 ] || die "the coordinator did not take the push for a build (HTTP $code)"
}

# follow_build SHA: waits for the build of SHA, shows it with its log as it
# is written, and sets BUILD_ID and RELEASE_ID.
follow_build() {
	local sha=$1 deadline=$((SECONDS + 60)) status
	component slipway-coordinator "$demo/coordinator.log"
	BUILD_ID=""
	while [ -z "$BUILD_ID" ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "no build of $sha within 60 s"
		BUILD_ID=$(slipway builds hello --json |
			jget "next((b['id'] for b in d['builds'] if b['sha'] == '$sha'), '')")
		[ -n "$BUILD_ID" ] || sleep 0.1
	done
	show slipway builds info "$BUILD_ID" || true
	status=$(slipway builds info "$BUILD_ID" --json | jget 'd["status"]')
	[ "$status" = complete ] || die "build $BUILD_ID is $status"
	RELEASE_ID=$(slipway builds info "$BUILD_ID" --json | jget 'd["release"] or ""')
	deadline=$((SECONDS + 10))
	until [ -n "$RELEASE_ID" ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "build $BUILD_ID made no release"
		sleep 0.1
		RELEASE_ID=$(slipway builds info "$BUILD_ID" --json | jget 'd["release"] or ""')
	done
}

# wait_rollout RELEASE: waits until the rollout of RELEASE ends; it must succeed.
wait_rollout() {
	local rel=$1 deadline=$((SECONDS + 120)) started=$SECONDS doc state=""
	component slipway-agent "$demo/agent.log"
	while :; do
		doc=$(slipway apps info hello --json)
		state=$(jget "(d.get('rollout') or {}).get('release') == '$rel' and d['rollout']['state'] or ''" <<<"$doc")
		case $state in
		succeeded) break ;;
		failed | "rolled back" | superseded)
			die "the rollout of $rel ended $state: $(jget 'd["rollout"]["reason"]' <<<"$doc")" ;;
		esac
		[ "$SECONDS" -lt "$deadline" ] || die "the rollout of $rel did not end within 120 s"
		sleep 0.2
	done
	say "rollout $(jget 'd["rollout"]["id"]' <<<"$doc") of $rel: succeeded (waited $((SECONDS - started)) s)"
}

# ps_shows RELEASE: slipway ps lists two running containers of RELEASE.
ps_shows() {
	slipway ps hello --json | jget "sum(1 for c in d['containers'] if c.get('release') == '$1' and c.get('state') == 'running') >= 2" | grep -qx True
}

first_push() {
	step "GitLab's Push Hook for the first commit"
	local sha
	sha=$(dgit -C "$demo/hello" rev-parse HEAD)
	post_push 0000000000000000000000000000000000000000 "$sha"

	step "The build: the coordinator fetches over SSH with the deploy key, builds, pushes"
	follow_build "$sha"
	if grep -q 'Accepted publickey for root' "$demo/sshd.log"; then
		say "sshd: $(grep -m1 'Accepted publickey for root' "$demo/sshd.log" |
			sed -E 's/^.*(Accepted publickey)/\1/')"
	fi

	step "The release, rolled out by the agent"
	wait_rollout "$RELEASE_ID"
	show slipway releases hello
	wait_until 20 "slipway ps does not show 2 running containers of $RELEASE_ID" ps_shows "$RELEASE_ID"
	show slipway ps

	step "The app answers through the agent's proxy"
	component slipway-agent "$demo/agent.log"
	wait_until 10 "no answer from v1 on 127.0.0.1:$PROXY_PORT" \
		bash -c "curl -s http://127.0.0.1:$PROXY_PORT/ | grep -q 'hello from v1'"
	show curl -si "http://127.0.0.1:$PROXY_PORT/" | tr -d '\r' | grep -Ei '^(HTTP|x-release|$)|hello'
}

LOAD_LUA='-- Counts answers by their X-Release header and the ones that are not 2xx,
-- over every thread (examples/demo.sh).
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) releases = {}; bad = 0 end
function response(status, headers, body)
  local r = headers["X-Release"] or headers["x-release"] or "(none)"
  releases[r] = (releases[r] or 0) + 1
  if status < 200 or status > 299 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local nbad = 0
  local all = {}
  for _, t in ipairs(threads) do
    nbad = nbad + t:get("bad")
    for k, v in pairs(t:get("releases")) do all[k] = (all[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format("DEMO requests=%d non2xx=%d socket_errors=%d seconds=%.1f\n",
    summary.requests, nbad, e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6))
  for k, v in pairs(all) do io.write(string.format("DEMO release %s %d\n", k, v)) end
end
'

second_push_under_load() {
	step "A change: v2, committed and pushed"
	component git "$demo/git.log"
	local before after
	before=$(dgit -C "$demo/hello" rev-parse HEAD)
	echo v2 >"$demo/hello/VERSION"
	dgit -C "$demo/hello" commit -q -am "Say hello from v2"
	dgit -C "$demo/hello" push -q origin main >>"$demo/git.log" 2>&1
	after=$(dgit -C "$demo/hello" rev-parse HEAD)
	dgit -C "$demo/hello" log --format='      %h %s' "$before..$after"

	step "Load on the proxy: wrk, 8 keep-alive connections, through the whole swap"
	component wrk "$demo/wrk.out"
	printf '%s' "$LOAD_LUA" >"$demo/load.lua"
	wrk -t1 -c8 -d600s --timeout 5s -s "$demo/load.lua" "http://127.0.0.1:$PROXY_PORT/" \
		</dev/null >"$demo/wrk.out" 2>&1 &
	WRK_PID=$!
	save_state
	sleep 1
	alive "$WRK_PID" || die "wrk exited at once"
	say "wrk (pid $WRK_PID) is asking GET / of 127.0.0.1:$PROXY_PORT as fast as it can"

	step "GitLab's Push Hook for v2"
	post_push "$before" "$after"

	step "The build of v2 (the load keeps running)"
	follow_build "$after"

	step "The swap: new containers, health checks, the proxy switches, the old ones drain"
	wait_rollout "$RELEASE_ID"
	component slipway-agent "$demo/agent.log"
	wait_until 10 "no answer from v2 on 127.0.0.1:$PROXY_PORT" \
		bash -c "curl -s http://127.0.0.1:$PROXY_PORT/ | grep -q 'hello from v2'"
	sleep 2 # a little more load on the new release alone
	kill -INT "$WRK_PID"
	wait "$WRK_PID" || true
	WRK_PID=""
	save_state

	local requests non2xx errors seconds failed
	requests=$(sed -nE 's/^DEMO requests=([0-9]+).*/\1/p' "$demo/wrk.out")
	non2xx=$(sed -nE 's/^DEMO .* non2xx=([0-9]+).*/\1/p' "$demo/wrk.out")
	errors=$(sed -nE 's/^DEMO .* socket_errors=([0-9]+).*/\1/p' "$demo/wrk.out")
	seconds=$(sed -nE 's/^DEMO .* seconds=([0-9.]+).*/\1/p' "$demo/wrk.out")
	if [ -z "$requests" ] || [ -z "$non2xx" ] || [ -z "$errors" ]; then
		die "wrk printed no figures"
	fi
	failed=$((non2xx + errors))
	say "answers by release (X-Release):"
	sed -nE 's/^DEMO release (.*) ([0-9]+)$/        \1: \2/p' "$demo/wrk.out" | sort
	echo
	if [ "$failed" -eq 0 ]; then
		printf '    %s%s requests in %s s through the swap: 0 failed%s\n' "$B" "$requests" "$seconds" "$N"
	else
		printf '    %s%s requests in %s s through the swap: %s failed%s (non-2xx %s, socket errors %s; wrk output in .demo/wrk.out)\n' \
			"$R" "$requests" "$seconds" "$failed" "$N" "$non2xx" "$errors"
		DEMO_FAILED=$failed
	fi
	show slipway releases hello
	show slipway ps
}

finish() {
	PROXY_PID=$(proxy_pid)
	save_state
	(
		umask 077
		cat >"$demo/env" <<-EOF
		export SLIPWAY_HOST=$SLIPWAY_HOST
		export SLIPWAY_API_KEY=\$(cat $demo/api-key)
		EOF
	)
	local push="examples/demo.sh push"
	[ "$build" = "$top/build" ] || push="$push $build"
	step "The demo is up and keeps running (took $((SECONDS - t0)) s)"
	cat <<-EOF
	    Use it:
	        export SLIPWAY_HOST=$SLIPWAY_HOST
	        export SLIPWAY_API_KEY=\$(cat $demo/api-key)      # or: . .demo/env
	        ${build#"$top"/}/slipway apps      # also: builds hello, releases hello, ps, agents, logs hello
	        curl http://127.0.0.1:$PROXY_PORT/       # the app, through the agent's proxy

	    Change the app and deploy it the way a GitLab push would:
	        cd .demo/hello && echo v3 > VERSION && git commit -qam v3 && cd -
	        $push          # pushes, posts the Push Hook, follows build and rollout

	    Logs: .demo/coordinator.log, .demo/agent.log, .demo/sshd.log, .demo/registry.log
	    Remove everything the demo started:
	        make demo-down
	EOF
}

cmd_up() {
	if [ -d "$demo" ]; then
		echo "demo: .demo/ exists (an earlier demo): taking it down first"
		cmd_down
	fi
	mkdir -m 700 "$demo"
	DEMO_ID=$(rand_hex 6)
	STARTED_DOCKERD=0
	DEMO_FAILED=0
	save_state
	echo "slipway demo $DEMO_ID: a git push becomes a zero-downtime release (docs/demo.md)"
	check_tools
	start_docker
	start_registry
	build_base_image
	start_coordinator
	start_agent
	make_repository
	start_sshd
	create_and_link_app
	first_push
	second_push_under_load
	finish
	if [ "$DEMO_FAILED" != 0 ]; then
		echo "demo: $DEMO_FAILED requests failed during the swap: a zero-downtime bug; see .demo/agent.log" >&2
		exit 1
	fi
}

# ---- down ----

cmd_down() {
	if [ ! -d "$demo" ]; then
		echo "demo: nothing to take down (no .demo/)"
		return 0
	fi
	load_state
	echo "demo: taking down demo ${DEMO_ID:-?}"
	local pid pids=() left=""
	# The proxy outlives the agent on purpose (it keeps serving while the agent
	# restarts): ask it for its pid, and take the one up recorded too.
	pid=$(proxy_pid)
	[ -z "$pid" ] || pids+=("$pid")
	[ -z "$PROXY_PID" ] || pids+=("$PROXY_PID")
	stop_pid "$WRK_PID" wrk 5
	stop_pid "$GITLAB_PID" gitlab.py 5
	stop_pid "$AGENT_PID" slipway-agent 20
	for pid in "${pids[@]}"; do
		stop_pid "$pid" slipway-agent 10
	done
	stop_pid "$COORD_PID" slipway-coordinator 20
	stop_pid "$SSHD_PID" sshd 5
	stop_pid "$REGISTRY_PID" docker-registry 10
	say "processes stopped"

	if docker_ok; then
		if [[ $DEMO_ID =~ ^[0-9a-f]+$ ]]; then
			local label=slipway.demo=$DEMO_ID ids
			ids=$(docker ps -aq --filter "label=$label")
			# shellcheck disable=SC2086
			[ -z "$ids" ] || docker rm -f -v $ids >/dev/null || true
			ids=$(docker network ls -q --filter "label=$label")
			# shellcheck disable=SC2086
			[ -z "$ids" ] || docker network rm $ids >/dev/null || true
			# The base image, and every image built from it (they inherit its label):
			# children before parents, so a few passes.
			for _ in 1 2 3 4 5; do
				ids=$(docker images -q --filter "label=$label" | awk '!seen[$0]++')
				[ -n "$ids" ] || break
				# shellcheck disable=SC2086
				docker rmi -f $ids >/dev/null 2>&1 || true
			done
			for kind in "ps -aq" "network ls -q" "images -aq"; do
				# shellcheck disable=SC2086
				ids=$(docker $kind --filter "label=$label")
				[ -z "$ids" ] || left="$left ${kind%% *}:${ids//$'\n'/,}"
			done
			say "containers, network and images labelled $label removed"
		fi
		if [ "$STARTED_DOCKERD" = 1 ] && alive "$DOCKERD_PID" dockerd; then
			if [ -n "$(docker ps -q)" ]; then
				say "dockerd (pid $DOCKERD_PID) was started by the demo, but other containers" \
					"run now: leaving it running"
			else
				say "stopping dockerd (pid $DOCKERD_PID), which the demo started"
				stop_pid "$DOCKERD_PID" dockerd 30
			fi
		fi
	elif [ -n "$DEMO_ID" ]; then
		say "Docker does not answer on $sock: skipping the Docker clean-up"
	fi
	case $demo in */.demo) rm -rf "$demo" ;; esac
	say "removed .demo/"
	[ -z "$left" ] || die "could not remove$left"
	echo "demo: down"
}

# ---- push: what a developer's git push plus GitLab's webhook would do ----

cmd_push() {
	[ -f "$statefile" ] || die "no demo is up (make demo)"
	load_state
	export SLIPWAY_HOST=http://127.0.0.1:$COORD_PORT
	SLIPWAY_API_KEY=$(cat "$demo/api-key")
	export SLIPWAY_API_KEY
	local before after
	before=$(dgit -C "$demo/hello" rev-parse origin/main)
	step "git push"
	component git "$demo/git.log"
	dgit -C "$demo/hello" push -q origin main >>"$demo/git.log" 2>&1
	after=$(dgit -C "$demo/hello" rev-parse HEAD)
	if [ "$before" = "$after" ]; then
		say "nothing new to push (commit a change in .demo/hello first)"
		return 0
	fi
	dgit -C "$demo/hello" log --format='      %h %s' "$before..$after"
	step "GitLab's Push Hook"
	post_push "$before" "$after"
	step "The build"
	follow_build "$after"
	step "The rollout"
	wait_rollout "$RELEASE_ID"
	wait_until 20 "slipway ps does not show 2 running containers of $RELEASE_ID" ps_shows "$RELEASE_ID"
	show slipway ps hello
	show curl -s "http://127.0.0.1:$PROXY_PORT/"
}

case $cmd in
up) cmd_up ;;
down) cmd_down ;;
push) cmd_push ;;
*)
	echo "usage: $0 up|down|push [BUILD_DIR]" >&2
	exit 2
	;;
esac
