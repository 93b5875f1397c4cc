#!/usr/bin/env python3
"""Images on ECR (issue 8), end to end with logins that matter.

The fake ECR (tests/fakes/ecr.py) hands out registry tokens and points its
proxyEndpoint at tests/fakes/registry_front.py, which forwards to the
harness's real registry only what carries a password the fake issued and
still honours (HTTP Basic, user AWS): the registry ECR's tokens open. The
REAL coordinator (registry.kind = ecr) builds an uploaded context on the real
Docker engine, creates the app's repository, pushes through the front with
its token; the REAL agent (ecr.registry = the front) pulls the release with
its OWN token, asked with its own credentials. Checked:
  - the repository slipway/<app> is created once (scan on push), the
    pushes were made with a token issued to the coordinator's key and the
    pulls with one issued to the agent's key; the release serves;
  - tokens are cached: a second deploy asks for none;
  - every token expires early (the fake's expire_registry_tokens): the next
    push and pull are refused, both fetch a new token once and succeed;
  - a registry that refuses even new tokens fails the build with a clear
    error, and the release's rollout with a clear reason, the old release
    serving on; an agent with wrong AWS credentials fails the pull saying
    GetAuthorizationToken refused it.
Everything on 127.0.0.1, temporary files only."""
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import agentlib as L  # noqa: E402
from coord_proc import BOOT, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
BASE_IMAGE = os.environ.get("SLIPWAY_TEST_BASE_IMAGE", "")
REGISTRY = os.environ.get("SLIPWAY_TEST_REGISTRY", "")
FAKES = os.path.join(HERE, "..", "fakes")
ACCOUNT = "123456789012"
COORD_KEY = ("AKIDECRCOORDINATOR", "coordinator-secret-for-the-ecr-test")
AGENT_KEY = ("AKIDECRAGENT", "agent-secret-for-the-ecr-test")

t = Tap(20)
env = L.Env("ecr")
APP = "ecr-" + env.run
procs = []


def spawn(*args):
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return int(p.stdout.readline())


def http(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def aws_env(key):
    return {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1],
            "AWS_SESSION_TOKEN": "", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(env.tmp, "no-credentials")}


def get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


class CoordForAgent:
    def __init__(self, co):
        self.co = co
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = BOOT

    def agents(self):
        st, b, _ = self.co.call("GET", "/v1/agents", token=self.co.admin_key)
        return b["agents"] if st == 200 else []


def context(release, listen):
    """The app's directory as tar.gz: FROM the harness's base image (testsrv)."""
    files = {
        "Dockerfile": f"FROM {BASE_IMAGE}\nENV RELEASE={release}\n",
        "slipway.yml": ("services:\n  web:\n    build: .\n    port: 8080\n"
                        "    health: {path: /health, interval: 200ms, timeout: 1s, grace: 20s}\n"
                        "    stop_grace: 2s\n"
                        f"    proxy: {{listen: {listen}}}\n"),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def deploy(co, release, listen):
    """Uploads a context; returns (build document, rollout document or {})."""
    st, b, _ = co.call("POST", f"/v1/apps/{APP}/builds?description={release}",
                       token=co.admin_key, raw=context(release, listen),
                       headers={"Content-Type": "application/gzip"})
    if st != 202:
        return {"error": f"upload: HTTP {st} {b}"}, {}
    bid = b["build"]

    def ended():
        st, d, _ = co.call("GET", f"/v1/builds/{bid}", token=co.admin_key)
        return d if st == 200 and d["status"] in ("complete", "failed") else None
    build = L.wait_for(ended, 300, 0.3) or {"id": bid, "error": "still running"}
    return build, (rollout_end(co, build["rollout"]) if build.get("rollout") else {})


def rollout_end(co, rid, timeout=120):
    def ended():
        st, b, _ = co.call("GET", f"/v1/apps/{APP}/rollouts/{rid}", token=co.admin_key)
        return b if st == 200 and b["state"] != "running" else None
    return L.wait_for(ended, timeout, 0.2) or {}


def release(co, image, rel, listen):
    """A release of image through the API; returns its rollout once it ended."""
    st, b, _ = co.call("POST", f"/v1/apps/{APP}/releases", token=co.admin_key, body={
        "services": {"web": {
            "image": image, "port": 8080, "environment": {"RELEASE": rel},
            "proxy": {"listen": listen, "hosts": [], "protocol": "http"},
            "health": {"type": "http", "path": "/health", "interval_ms": 100,
                       "timeout_ms": 1000, "grace_ms": 8000},
            "count": 1, "stop_grace_ms": 2000}}, "description": rel})
    return rollout_end(co, b.get("rollout")) if st == 202 else {"error": [st, b]}


def build_log(co, bid):
    st, text, _ = co.call("GET", f"/v1/builds/{bid}/log", token=co.admin_key)
    return text if isinstance(text, str) else json.dumps(text)


def owners(front, ecr):
    """{"push": {akids}, "pull": {akids}}: whose tokens the front let through."""
    tokens = {x["password"]: x["akid"] for x in http(ecr, "GET", "/_fake/tokens")["tokens"]}
    out = {"push": set(), "pull": set()}
    for pw, n in http(front, "GET", "/_front/stats")["passwords"].items():
        for kind in ("push", "pull"):
            if n[kind]:
                out[kind].add(tokens.get(pw, "?"))
    return out


def ecr_requests(ecr, action):
    return http(ecr, "GET", "/_fake/stats")["requests"].get(action, 0)


def main():
    front = spawn(os.path.join(FAKES, "registry_front.py"), "--to", REGISTRY)
    ecr = spawn(os.path.join(FAKES, "ecr.py"), "--proxy-endpoint", f"http://127.0.0.1:{front}",
                "--account", ACCOUNT, "--key", ":".join(COORD_KEY), "--key", ":".join(AGENT_KEY))
    http(front, "POST", "/_front/config", {"check_url": f"http://127.0.0.1:{ecr}/_fake/check"})
    host = f"127.0.0.1:{front}"
    # The coordinator inherits this process's environment: its credentials.
    os.environ.update(aws_env(COORD_KEY))
    with Coordinator(extra={"docker.socket": L.DOCKER_SOCK, "queue.lease": "30s",
                            "registry.kind": "ecr", "registry.host": host,
                            "registry.region": "us-east-1", "registry.account": ACCOUNT,
                            "registry.endpoint": f"http://127.0.0.1:{ecr}"}) as co:
        key = co.admin_key
        agent_extra = {"ecr.registry": host, "ecr.region": "us-east-1", "ecr.account": ACCOUNT,
                       "ecr.endpoint": f"http://127.0.0.1:{ecr}",
                       # its own containers only, not those of tests running beside it
                       "deploy.labels": f"{L.LABEL},slipway.ecrtest={env.run}"}
        agent = env.agent(CoordForAgent(co), instance="ecr", extra=agent_extra)
        agent.start(env_extra=aws_env(AGENT_KEY))
        t.check("the real agent registers", agent.wait_registered(30), agent.log_text()[-2000:])
        st, b, _ = co.call("POST", "/v1/apps", token=key, body={"name": APP})
        listen = L.free_port()

        # 1. The first deploy: repository, push with the coordinator's token,
        #    pull with the agent's.
        build, ro = deploy(co, "ecr-v1", listen)
        image = ((build.get("images") or {}).get("web") or {}).get("image", "")
        t.check("the build completes and its image is in the app's ECR repository",
                build.get("status") == "complete"
                and image.startswith(f"{host}/slipway/{APP}:web."),
                (build, co.log_tail(), build_log(co, build.get("id", "-"))[-3000:]))
        repos = {r["repositoryName"]: r for r in http(ecr, "GET", "/_fake/repositories")
                 ["repositories"]}
        r = repos.get(f"slipway/{APP}", {})
        t.check("the repository slipway/<app> was created (scan on push)",
                r.get("repositoryName") == f"slipway/{APP}"
                and r.get("imageScanningConfiguration") == {"scanOnPush": True}, repos)
        t.check("the release rolls out on the agent and serves",
                ro.get("state") == "succeeded"
                and L.wait_for(lambda: "hello from ecr-v1" in get(listen), 10),
                (ro, agent.log_text()[-3000:]))
        who = owners(front, ecr)
        t.check("the registry saw pushes with the coordinator's token only",
                who["push"] == {COORD_KEY[0]}, who)
        t.check("and pulls with the agent's own token",
                AGENT_KEY[0] in who["pull"], who)
        t.check("nothing was refused", http(front, "GET", "/_front/stats")["refused"] == 0,
                http(front, "GET", "/_front/stats"))
        tokens_after_first = ecr_requests(ecr, "GetAuthorizationToken")
        t.check("one token each for the coordinator and the agent",
                tokens_after_first == 2, http(ecr, "GET", "/_fake/stats"))

        # 2. Cached: no new repository call, no new token.
        build, ro = deploy(co, "ecr-v2", listen)
        t.check("a second deploy serves with the cached tokens and no CreateRepository",
                build.get("status") == "complete" and ro.get("state") == "succeeded"
                and L.wait_for(lambda: "hello from ecr-v2" in get(listen), 10)
                and ecr_requests(ecr, "GetAuthorizationToken") == tokens_after_first
                and ecr_requests(ecr, "CreateRepository") == 1,
                (build.get("error"), ro, get(listen), http(ecr, "GET", "/_fake/stats")))

        # 3. Every token issued expires now: refused once, then a new token. The new
        #    ones live 10 minutes only (for step 3b).
        http(ecr, "POST", "/_fake/config", {"token_ttl_s": 600})
        http(ecr, "POST", "/_fake/fault", {"kind": "expire_registry_tokens"})
        http(front, "POST", "/_front/clear")
        build, ro = deploy(co, "ecr-v3", listen)
        v3_image = ((build.get("images") or {}).get("web") or {})
        log = build_log(co, build.get("id", "-"))
        t.check("after the tokens expired, the push is refused once and retried with a new "
                "token", build.get("status") == "complete" and "logging in to ECR again" in log,
                (build.get("error"), log[-2000:]))
        t.check("the agent's pull likewise, and the release serves",
                ro.get("state") == "succeeded" and "registryauth.refused" in agent.log_text()
                and L.wait_for(lambda: "hello from ecr-v3" in get(listen), 10),
                (ro, agent.log_text()[-3000:]))
        stats = http(front, "GET", "/_front/stats")
        t.check("two new tokens (coordinator, agent), the old ones refused",
                ecr_requests(ecr, "GetAuthorizationToken") == tokens_after_first + 2
                and stats["refused"] >= 2, (stats, http(ecr, "GET", "/_fake/stats")))

        # 3b. Tokens with less than 30 minutes left are replaced before they are
        #     used, without waiting for a refusal.
        before = ecr_requests(ecr, "GetAuthorizationToken")
        refused = http(front, "GET", "/_front/stats")["refused"]
        build, ro = deploy(co, "ecr-v3b", listen)
        t.check("tokens close to their expiry are replaced before use: new tokens, no refusal",
                build.get("status") == "complete" and ro.get("state") == "succeeded"
                and ecr_requests(ecr, "GetAuthorizationToken") >= before + 2
                and http(front, "GET", "/_front/stats")["refused"] == refused,
                (build.get("error"), ro, http(ecr, "GET", "/_fake/stats"),
                 http(front, "GET", "/_front/stats")["refused"], refused))
        t.check("and that release serves",
                L.wait_for(lambda: "hello from ecr-v3b" in get(listen), 10), get(listen))
        http(ecr, "POST", "/_fake/config", {"token_ttl_s": 43200})

        # 4. A registry that refuses every token: clear failures, v3b serves on.
        http(front, "POST", "/_front/config", {"refuse_all": True})
        build, ro = deploy(co, "ecr-v4", listen)
        t.check("a push refused even with a new token fails the build, saying so",
                build.get("status") == "failed" and "also with a new ECR token"
                in (build.get("error") or "") and "unauthorized" in build.get("error", ""),
                build)
        # Docker answers a digest it pulled before from its own store, without the
        # registry: this release names one it never pulled.
        ro = release(co, f"{host}/slipway/{APP}@sha256:{'0' * 64}", "ecr-v5", listen)
        text = json.dumps(ro)
        t.check("a pull refused even with a new token fails the rollout with a clear reason",
                ro.get("state") not in (None, "succeeded")
                and "refused the ECR token, also a new one" in text, ro)
        t.check("and the old release keeps serving", "hello from ecr-v3b" in get(listen),
                get(listen))

        # 5. The agent with wrong AWS credentials: no token, a clear reason.
        http(front, "POST", "/_front/config", {"refuse_all": False})
        agent.stop()
        agent.start(env_extra=aws_env((AGENT_KEY[0], "not-the-agent-secret")))
        time.sleep(1)
        ro = release(co, f"{v3_image.get('image')}@{v3_image.get('digest')}", "ecr-v6", listen)
        text = json.dumps(ro)
        t.check("an agent whose credentials ECR refuses fails the pull: no ECR login, "
                "GetAuthorizationToken named",
                ro.get("state") not in (None, "succeeded") and "no ECR login for " + host in text
                and "GetAuthorizationToken" in text, (ro, agent.log_text()[-2000:]))
        t.check("the old release still serves", "hello from ecr-v3b" in get(listen), get(listen))
        t.check("no secret in the logs: no registry password appears",
                not any(x["password"] in agent.log_text() + co.log_tail(400)
                        for x in http(ecr, "GET", "/_fake/tokens")["tokens"]), "password logged")


try:
    try:
        main()
    except Exception:
        import traceback
        t.fail("the test ran to its end", traceback.format_exc())
finally:
    env.close()  # first: no container of the app may hold its images
    subprocess.run(["sh", "-c", "ids=$(docker images -q --filter "
                    f"label=slipway.app={APP} | sort -u); "
                    "[ -z \"$ids\" ] || docker rmi -f $ids >/dev/null 2>&1"],
                   env=dict(os.environ, DOCKER_HOST="unix://" + L.DOCKER_SOCK))
    for p in procs:
        p.terminate()
sys.exit(t.done())
