"""Shared pieces of the log shipper's integration tests (test_logship_*.py).

The real slipway-agent (through agentlib: fake coordinator, real proxy, the
harness's Docker engine) ships the output of containers these tests create
directly (labelled like the agent's own: slipway.app, slipway.service and
the run label, so the agent manages them) to the fake CloudWatch Logs in
tests/fakes/cloudwatch.py, which verifies every SigV4 signature itself.
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agentlib as L  # noqa: E402

FAKE_CW = os.path.join(L.TOP, "tests", "fakes", "cloudwatch.py")
BASE_IMAGE = os.environ.get("SLIPWAY_TEST_BASE_IMAGE", "")
AKID = "AKIDLOGSHIPTEST"
SECRET = "logship-test-secret-key"
PREFIX = "/slipway/"


class FakeCloudWatch:
    def __init__(self, token=None, store=True):
        args = [sys.executable, FAKE_CW, "--access-key", AKID, "--secret-key", SECRET]
        if token:
            args += ["--token", token]
        if not store:
            args.append("--no-store")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def fault(self, kind, **kw):
        kw["kind"] = kind
        return self.call("POST", "/_fake/fault", kw)

    def clear(self):
        self.call("POST", "/_fake/clear", {})

    def streams(self):
        return self.call("GET", "/_fake/streams")["streams"]

    def stream(self, group, stream):
        for s in self.streams():
            if s["group"] == group and s["stream"] == stream:
                return s
        return None

    def events(self, group, stream):
        q = urllib.parse.urlencode({"group": group, "stream": stream})
        return self.call("GET", "/_fake/events?" + q)["events"]

    def stats(self):
        return self.call("GET", "/_fake/stats")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_credentials(path, token=None):
    with open(path + ".tmp", "w") as f:
        f.write(f"[default]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\n")
        if token:
            f.write(f"aws_session_token = {token}\n")
    os.replace(path + ".tmp", path)


def cloudwatch_agent(env, coord, cw, creds_file, extra=None, instance="logs"):
    """An agent shipping to the fake CloudWatch; returns (agent, metrics port)."""
    mport = L.free_port()
    cfg = {
        "cloudwatch.region": "us-east-1",
        "cloudwatch.endpoint": cw.url,
        "logs.flush_interval": "200ms",
        "logs.retry_base": "50ms",
        "logs.retry_cap": "500ms",
        "logs.request_timeout": "5s",
        "metrics.listen": f"127.0.0.1:{mport}",
        "metrics.interval": "60s",
    }
    cfg.update(extra or {})
    agent = env.agent(coord, instance=instance, extra=cfg)
    agent.env_extra = {"AWS_SHARED_CREDENTIALS_FILE": creds_file, "AWS_PROFILE": "default",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "",
                       "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    return agent, mport


def start_agent(agent):
    e = {k: v for k, v in agent.env_extra.items()}
    # An empty environment value is "set" for the credentials reader: drop them.
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
        e.pop(k, None)
    agent.start(e)
    return agent


def prom(port):
    """The agent's Prometheus page as {name{labels}: value}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def ensure_network(env):
    """The test's own bridge network (the default bridge may be shared or gone)."""
    key, _, value = L.LABEL.partition("=")
    st, doc = L.docker("GET", f"/networks/{env.network}")
    if st == 200:
        return
    st, doc = L.docker("POST", "/networks/create", {"Name": env.network, "Driver": "bridge",
                                                     "Labels": {key: value}})
    assert st in (201, 409), (st, doc)


def container(env, app, service="web", cmd=None, name=None, env_vars=None, tty=False):
    """Creates and starts a managed-looking container; returns its id."""
    ensure_network(env)
    key, _, value = L.LABEL.partition("=")
    labels = {key: value, "slipway.app": app, "slipway.service": service,
              "slipway.release": "r1", "slipway.generation": "1"}
    body = {"Image": BASE_IMAGE, "Labels": labels, "Tty": tty,
            "Env": [f"{k}={v}" for k, v in (env_vars or {}).items()],
            "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}},
                           "NetworkMode": env.network}}
    if cmd:
        body["Cmd"] = cmd
    # 8 random bytes: tests start hundreds of these, and 2 bytes collided.
    cname = f"sw{env.run}-{name or app}-{os.urandom(8).hex()}"
    st, doc = L.docker("POST", f"/containers/create?name={cname}", body)
    assert st == 201, (st, doc)
    cid = doc["Id"]
    st, doc = L.docker("POST", f"/containers/{cid}/start")
    assert st in (204, 304), (st, doc)
    return cid


def container_ip(cid):
    st, doc = L.docker("GET", f"/containers/{cid}/json")
    nets = doc["NetworkSettings"]["Networks"]
    for n in nets.values():
        if n.get("IPAddress"):
            return n["IPAddress"]
    return doc["NetworkSettings"].get("IPAddress")


def testsrv(cid, path, timeout=120):
    """GET path on the container's testsrv (port 8080)."""
    ip = container_ip(cid)
    deadline = time.time() + 10
    while True:
        try:
            c = http.client.HTTPConnection(ip, 8080, timeout=timeout)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            c.close()
            return r.status, body
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def stream_name(service, instance, cid):
    return f"{service}/{instance}/{cid[:12]}"


def seqs(cw, group, stream, kind="log"):
    s = cw.stream(group, stream)
    return (s or {}).get("seqs", {}).get(kind)


def wait_lines(cw, group, stream, n, timeout, kind="log"):
    """Waits until the stream holds n distinct seq numbers of kind; returns the summary."""
    def got():
        x = seqs(cw, group, stream, kind)
        return x if x and x["distinct"] >= n else None
    return L.wait_for(got, timeout, 0.2) or seqs(cw, group, stream, kind)


def stop_container(cid, t=1):
    L.docker("POST", f"/containers/{cid}/stop?t={t}")


def remove_container(cid):
    L.docker("DELETE", f"/containers/{cid}?force=1&v=1")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def private_mb(pid):
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024.0


def free_socket_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def aws_call(cw, op, doc, region="us-east-1"):
    """A SigV4-signed JSON 1.1 request to the fake, as an SDK would send it
    (tests read back with DescribeLogStreams and GetLogEvents)."""
    import datetime
    import hashlib
    import hmac
    body = json.dumps(doc).encode()
    now = datetime.datetime.now(datetime.timezone.utc)
    amz, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = f"127.0.0.1:{cw.port}"
    headers = {"content-type": "application/x-amz-json-1.1", "host": host, "x-amz-date": amz,
               "x-amz-target": f"Logs_20140328.{op}"}
    signed = ";".join(sorted(headers))
    creq = "\n".join(["POST", "/", "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                      signed, hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/logs/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + SECRET).encode()
    for part in (date, region, "logs", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    h = {"Content-Type": headers["content-type"], "X-Amz-Date": amz,
         "X-Amz-Target": headers["x-amz-target"],
         "Authorization": f"AWS4-HMAC-SHA256 Credential={AKID}/{scope}, SignedHeaders={signed}, "
                          f"Signature={sig}"}
    c = http.client.HTTPConnection("127.0.0.1", cw.port, timeout=30)
    c.request("POST", "/", body=body, headers=h)
    r = c.getresponse()
    out = json.loads(r.read() or b"{}")
    c.close()
    return r.status, out
