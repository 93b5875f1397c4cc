"""Shared pieces of the agent's integration tests (tests/integration/test_agent_*.py).

The real slipway-agent binary runs against the fake coordinator
(tests/fakes/coordinator.py), the real proxy process it spawns and the real
Docker engine of the harness (tests/integration/harness.sh). Everything a test
creates in Docker carries the run's label (SLIPWAY_TEST_LABEL) and its own
network, and is removed by Env.close().
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

TOP = os.environ.get("SLIPWAY_TOP") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SLIPWAY_BUILD", os.path.join(TOP, "build"))
# SLIPWAY_AGENT_BIN runs the tests against another agent binary (the static
# one: build/cross/x86_64/slipway-agent); relative paths are from the top.
AGENT = os.path.join(TOP, os.environ.get("SLIPWAY_AGENT_BIN")
                     or os.path.join(BUILD, "slipway-agent"))
FAKE = os.path.join(TOP, "tests", "fakes", "coordinator.py")
DOCKER_SOCK = os.environ.get("SLIPWAY_DOCKER_SOCKET", "/var/run/docker.sock")
LABEL = os.environ.get("SLIPWAY_TEST_LABEL", "")
IMAGE_V1 = os.environ.get("SLIPWAY_TEST_IMAGE", "")
IMAGE_V2 = os.environ.get("SLIPWAY_TEST_IMAGE_V2", "")


def require_env():
    if not (LABEL and IMAGE_V1 and IMAGE_V2):
        print("1..0 # SKIP run through tests/run (harness.sh up sets the environment)")
        sys.exit(0 if os.environ.get("CI") != "true" else 1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(cond, timeout, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return None


# ---- Docker over its socket (the CLI would do, but this needs no version match) ----

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def unix_request(sock_path, method, path, body=None, timeout=60):
    c = UnixHTTPConnection(sock_path, timeout)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    c.close()
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = raw.decode(errors="replace")
    return r.status, doc


def docker(method, path, body=None, timeout=60):
    return unix_request(DOCKER_SOCK, method, "/v1.41" + path, body, timeout)


def containers(label_filters, all_=True):
    q = urllib.parse.quote(json.dumps({"label": label_filters}))
    st, doc = docker("GET", f"/containers/json?all={1 if all_ else 0}&filters={q}")
    return doc if st == 200 else []


def container_logs(cid, tail=20):
    c = UnixHTTPConnection(DOCKER_SOCK, 10)
    c.request("GET", f"/v1.41/containers/{cid}/logs?stdout=1&stderr=1&tail={tail}")
    raw = c.getresponse().read()
    c.close()
    out, i = [], 0
    while i + 8 <= len(raw):  # 8-byte frame headers
        n = int.from_bytes(raw[i + 4:i + 8], "big")
        out.append(raw[i + 8:i + 8 + n].decode(errors="replace"))
        i += 8 + n
    return "".join(out)


# ---- the fake coordinator ----

class Coordinator:
    def __init__(self, lease_s=5, heartbeat_s=1, token="test-bootstrap-token", max_wait_s=30):
        self.token = token
        self.proc = subprocess.Popen(
            [sys.executable, FAKE, "--lease-s", str(lease_s), "--heartbeat-s", str(heartbeat_s),
             "--bootstrap-token", token, "--max-wait-s", str(max_wait_s)],
            stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def agents(self):
        return self.call("GET", "/_fake/agents")["agents"]

    def desired(self, app, generation, release, type_="deploy", enqueue=True):
        return self.call("POST", "/_fake/desired", {"app": app, "generation": generation,
                                                    "release": release, "type": type_,
                                                    "enqueue": enqueue})["jobs"]

    def job(self, job, omit=(), agent=None):
        return self.call("POST", "/_fake/jobs", {"job": job, "omit": list(omit),
                                                 "agent": agent})["id"]

    def jobs(self):
        return {j["id"]: j for j in self.call("GET", "/_fake/jobs")["jobs"]}

    def acks(self, job=None):
        a = self.call("GET", "/_fake/acks")["acks"]
        return [x for x in a if job is None or x["job"] == job]

    def inventory(self):
        return self.call("GET", "/_fake/inventory")["agents"]

    def fault(self, kind, count=1, seconds=None, path=None):
        self.call("POST", "/_fake/fault", {"kind": kind, "count": count, "seconds": seconds,
                                           "path": path})

    def requests(self):
        return self.call("GET", "/_fake/requests")["requests"]

    def logs(self):
        """What agents posted to .../logs: {agent_id: {"posts", "events", "rejected",
        "streams": {"app/service/container": events}, "last": [newest events]}}."""
        return self.call("GET", "/_fake/logs")["agents"]

    def metrics(self):
        """The latest .../metrics batch per agent: {agent_id: {"posts", "metrics"}}."""
        return self.call("GET", "/_fake/metrics")["agents"]

    def wait_result(self, job_id, timeout=60):
        """Waits until the job is acknowledged (or failed by the queue); returns its record."""
        def done():
            j = self.jobs().get(job_id)
            return j if j and j["state"] in ("acked", "failed") else None
        return wait_for(done, timeout, 0.1)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- release specs ----

def service(name="web", image=None, env=None, port=8080, listen=None, hosts=None, count=1,
            health=None, stop_grace_ms=2000, memory_mb=0, command=None, protocol="http"):
    s = {"name": name, "image": image or IMAGE_V1, "command": command,
         "environment": env or {}, "port": port,
         "proxy": {"listen": listen, "hosts": hosts or [], "protocol": protocol}
         if listen else None,
         "health": health or {"type": "http", "path": "/health", "interval_ms": 100,
                              "timeout_ms": 1000, "grace_ms": 20000},
         "count": count, "memory_mb": memory_mb, "stop_grace_ms": stop_grace_ms}
    return s


def release(rid, app, services):
    return {"id": rid, "app": app, "build": "b_" + rid, "created_ms": int(time.time() * 1000),
            "services": services}


# ---- the agent under test ----

class Agent:
    def __init__(self, env, coord, instance="test-agent", extra=None):
        self.env = env
        self.coord = coord
        self.state_dir = os.path.join(env.tmp, "state-" + instance)
        os.makedirs(self.state_dir, exist_ok=True)
        self.log_path = os.path.join(env.tmp, f"agent-{instance}.log")
        self.config = os.path.join(env.tmp, f"agent-{instance}.conf")
        cfg = {
            "coordinator.url": coord.url,
            "coordinator.bootstrap_token": coord.token,
            "coordinator.retry_base": "100ms",
            "coordinator.retry_cap": "1s",
            "agent.instance_id": instance + "-" + env.run,
            "agent.state_dir": self.state_dir,
            "agent.inventory_interval": "5s",
            "docker.socket": DOCKER_SOCK,
            "docker.network": env.network,
            "deploy.labels": LABEL,
            "deploy.name_prefix": "sw" + env.run,
            "deploy.keep_releases": "3",
            "deploy.min_free_disk": "64M",
            "deploy.drain_timeout": "10s",
            "proxy.bind": "127.0.0.1",
            # Never the default 127.0.0.1:9464: agents of parallel tests would collide.
            "metrics.listen": f"127.0.0.1:{free_port()}",
            "log.level": os.environ.get("SW_LOG", "info"),
        }
        cfg.update(extra or {})
        cfg = {k: v for k, v in cfg.items() if v is not None}  # None: leave the key out
        listen = cfg.get("metrics.listen", "")
        self.metrics_port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
        with open(self.config, "w") as f:
            for k, v in cfg.items():
                f.write(f'{k} = "{v}"\n')
        self.proc = None
        self.log = None

    def start(self, env_extra=None):
        e = dict(os.environ)
        e.update(env_extra or {})
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([AGENT, "--config", self.config], stdout=self.log,
                                     stderr=self.log, env=e, start_new_session=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def control(self, method, path, body=None):
        return unix_request(os.path.join(self.state_dir, "proxy.sock"), method, path, body, 10)

    def metrics(self):
        """The agent's Prometheus page as {"name{labels}": value} ({} when it
        does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
        except (OSError, TypeError):
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def proxy_pid(self):
        try:
            st, doc = self.control("GET", "/v1/health")
            return doc.get("pid") if st == 200 else None
        except OSError:
            return None

    def wait_registered(self, timeout=20):
        return wait_for(lambda: [a for a in self.coord.agents()
                                 if a.get("instance_id", "").endswith(self.env.run)],
                        timeout, 0.1)


class Env:
    """Per-test resources: temp dir, docker network name, cleanup of both."""

    def __init__(self, name):
        self.run = os.urandom(3).hex()
        self.tmp = tempfile.mkdtemp(prefix=f"slipway-{name}-")
        self.network = f"sw-{name}-{self.run}"
        self.agents = []
        self.coords = []

    def coordinator(self, **kw):
        c = Coordinator(**kw)
        self.coords.append(c)
        return c

    def agent(self, coord, **kw):
        a = Agent(self, coord, **kw)
        self.agents.append(a)
        return a

    def mine(self):
        """This test's containers (the run label plus our name prefix)."""
        return [c for c in containers([LABEL])
                if any(n.lstrip("/").startswith("sw" + self.run) for n in c.get("Names", []))]

    def close(self):
        pids = set()
        for a in self.agents:
            p = a.proxy_pid()
            if p:
                pids.add(p)
            a.kill()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        for c in self.coords:
            c.close()
        for c in self.mine():
            docker("DELETE", f"/containers/{c['Id']}?force=1&v=1")
        docker("DELETE", f"/networks/{self.network}")
        # Keep the agents' logs next to the test logs for a post-mortem.
        logs = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(TOP, BUILD),
                            "test-logs")
        os.makedirs(logs, exist_ok=True)
        for a in self.agents:
            if os.path.exists(a.log_path):
                shutil.copy(a.log_path, os.path.join(logs, os.path.basename(self.tmp).rsplit(
                    "-", 1)[0] + "-" + os.path.basename(a.log_path)))
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- load ----

class Poller(threading.Thread):
    """One keep-alive client asking GET / as fast as it can; records every
    answer's release with its time, and every failure. With body set it POSTs
    that body instead and checks the echo (testsrv's /echo)."""

    def __init__(self, port, path="/", host=None, body=None, pause=0.0):
        super().__init__(daemon=True)
        self.port, self.path, self.host = port, path, host
        self.body, self.pause = body, pause
        self.stop_flag = False
        self.releases = {}        # release -> count
        self.first_seen = {}      # release -> wall ms of the first answer from it
        self.failures = []
        self.total = 0
        self.lock = threading.Lock()

    def run(self):
        conn = None
        while not self.stop_flag:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                headers = {"Host": self.host} if self.host else {}
                if self.body is not None:
                    conn.request("POST", self.path, body=self.body, headers=headers)
                else:
                    conn.request("GET", self.path, headers=headers)
                r = conn.getresponse()
                got = r.read()
                if self.body is not None and r.status == 200 and got != self.body:
                    with self.lock:
                        self.failures.append(f"echo mismatch: {len(got)} bytes")
                rel = r.getheader("X-Release", "?")
                t = int(time.time() * 1000)
                with self.lock:
                    self.total += 1
                    if 200 <= r.status < 300:
                        self.releases[rel] = self.releases.get(rel, 0) + 1
                        self.first_seen.setdefault(rel, t)
                    else:
                        self.failures.append(f"HTTP {r.status} from {rel}")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                if self.pause:
                    time.sleep(self.pause)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.total += 1
                    self.failures.append(repr(e))
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.01)

    def stop(self):
        self.stop_flag = True
        self.join(15)


WRK_LUA = r"""
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  local r = headers["X-Release"] or "?"
  counts[r] = (counts[r] or 0) + 1
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do all[k] = (all[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format("%q:%d", k, v)) end
  io.write("RELEASES {" .. table.concat(parts, ",") .. "}\n")
end
"""


class Wrk:
    """wrk with keep-alive connections; result() parses errors and releases seen."""

    def __init__(self, env, port, seconds, connections=64, threads=2, path="/"):
        script = os.path.join(env.tmp, "releases.lua")
        with open(script, "w") as f:
            f.write(WRK_LUA)
        self.out = os.path.join(env.tmp, f"wrk-{port}-{time.time():.0f}.out")
        self.proc = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
             "-s", script, f"http://127.0.0.1:{port}{path}"],
            stdout=open(self.out, "w"), stderr=subprocess.STDOUT)

    def interrupt(self):
        """Ends the run now (wrk prints its figures on SIGINT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def result(self, timeout=600):
        self.proc.wait(timeout)
        text = open(self.out).read()
        r = {"text": text, "requests": 0, "non2xx": 0, "socket_errors": 0, "releases": {}}
        m = re.search(r"(\d+) requests in", text)
        if m:
            r["requests"] = int(m.group(1))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if m:
            r["non2xx"] = int(m.group(1))
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if m:
            r["socket_errors"] = sum(int(x) for x in m.groups())
        m = re.search(r"RELEASES (\{.*\})", text)
        if m:
            r["releases"] = json.loads(m.group(1))
        return r


def make_image(env, tag, changes=()):
    """A new image (its own id) in the test registry: the test image with
    `changes` (Dockerfile instructions, e.g. HEALTHCHECK) and the run's label,
    pushed and then removed locally so the agent really pulls it."""
    reg = os.environ["SLIPWAY_TEST_REGISTRY"]
    ref = f"{reg}/slipway-test/agent-{env.run}:{tag}"
    e = dict(os.environ, DOCKER_HOST="unix://" + DOCKER_SOCK)

    def run(*args):
        return subprocess.run(["docker", *args], env=e, check=True, capture_output=True,
                              text=True).stdout.strip()
    run("pull", "-q", IMAGE_V1)
    cid = run("create", "--label", LABEL, IMAGE_V1)
    try:
        args = ["commit"]
        for c in list(changes) + [f"LABEL {LABEL}",
                                  f"LABEL slipway.test.tag={tag}"]:
            args += ["--change", c]
        run(*args, cid, ref)
    finally:
        run("rm", "-f", cid)
    run("push", ref)
    image_id = run("image", "inspect", "-f", "{{.Id}}", ref)
    run("rmi", ref)
    return ref, image_id


def image_exists(image_id):
    st, _ = docker("GET", f"/images/{image_id}/json")
    return st == 200
