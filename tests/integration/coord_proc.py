"""A real slipway-coordinator process for the integration tests, and a small
HTTP client speaking its API and the agent protocol (standard library only).

    from coord_proc import Coordinator
    with Coordinator(extra={"queue.lease": "2s"}) as co:
        key = co.admin_key
        st, body, hdrs = co.call("GET", "/v1/apps", token=key)
"""
import http.client
import json
import os
import re
import signal
import subprocess
import tempfile
import time

TOP = os.environ.get("SLIPWAY_TOP") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SLIPWAY_BUILD") or os.path.join(TOP, "build")
BIN = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(TOP, BUILD),
                   "slipway-coordinator")
BOOT = "bootstrap-token-for-integration-tests"


class Coordinator:
    def __init__(self, extra=None, data_dir=None):
        self.tmp = tempfile.mkdtemp(prefix="slipway-coord-it-")
        self.data = data_dir or os.path.join(self.tmp, "data")
        self.conf = os.path.join(self.tmp, "coordinator.conf")
        lines = {
            "data.dir": self.data,
            "server.listen": "127.0.0.1:0",
            "agents.bootstrap_token": BOOT,
            "docker.socket": os.path.join(self.tmp, "no-docker.sock"),
            "log.level": "info",
        }
        lines.update(extra or {})
        with open(self.conf, "w") as f:
            for k, v in lines.items():
                f.write(f"{k} = \"{v}\"\n")
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmp, "coordinator.log")
        self.admin_key = None

    # -- process --
    def start(self, timeout=10):
        self.logf = open(self.log_path, "ab")
        start_at = self.logf.tell()
        self.proc = subprocess.Popen([BIN, "--config", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start_at)
                text = f.read().decode(errors="replace")
            m = re.search(r"coordinator\.started .* port=(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("coordinator exited:\n" + text)
            time.sleep(0.02)
        raise RuntimeError("coordinator did not start:\n" + self.log_tail())

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None

    def restart(self):
        """Starts again on the SAME port (agents keep their URL)."""
        port = self.port
        with open(self.conf) as f:
            text = f.read()
        text = re.sub(r'server\.listen = ".*"', f'server.listen = "127.0.0.1:{port}"', text)
        with open(self.conf, "w") as f:
            f.write(text)
        deadline = time.time() + 10
        while True:
            try:
                return self.start()
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)  # the port may linger a moment

    def pid(self):
        return self.proc.pid

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def apikey(self, name="admin", role="admin", app=None):
        args = [BIN, "--config", self.conf, "apikey", "create", "--name", name, "--role", role]
        if app:
            args += ["--app", app]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    def __enter__(self):
        self.start()
        self.admin_key = self.apikey()
        return self

    def __exit__(self, *exc):
        self.kill(signal.SIGTERM)
        subprocess.run(["rm", "-rf", self.tmp])

    # -- HTTP --
    def call(self, method, path, body=None, token=None, headers=None, timeout=40, raw=None):
        """(status, parsed JSON or text, headers dict). Raises on transport errors."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Slipway-Protocol": "1"}
        if token:
            h["Authorization"] = "Bearer " + token
        if headers:
            h.update(headers)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            text = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode(errors="replace")
        return r.status, parsed, hdrs


class Agent:
    """A protocol-speaking fake agent."""

    def __init__(self, co, instance_id, fleet="default"):
        self.co = co
        self.instance_id = instance_id
        self.fleet = fleet
        self.id = None
        self.token = None

    def register(self):
        st, b, _ = self.co.call("POST", "/v1/agents/register", token=BOOT, body={
            "instance_id": self.instance_id, "hostname": "host-" + self.instance_id,
            "fleet": self.fleet, "version": "0.1.0", "arch": "x86_64", "protocol": 1,
            "capabilities": ["deploy"]})
        if st == 200:
            self.id, self.token = b["agent_id"], b["token"]
        return st, b

    def call(self, method, what, body=None, **kw):
        return self.co.call(method, f"/v1/agents/{self.id}/{what}", body=body,
                            token=self.token, **kw)

    def poll(self, wait=0, max_jobs=10, **kw):
        return self.call("GET", f"jobs?wait={wait}&max={max_jobs}", **kw)

    def ack(self, job, lease, result="succeeded", **extra):
        body = {"lease_id": lease, "result": result}
        body.update(extra)
        return self.call("POST", f"jobs/{job}/ack", body=body)

    def extend(self, job, lease, extend_s=60):
        return self.call("POST", f"jobs/{job}/extend", body={"lease_id": lease,
                                                             "extend_s": extend_s})
