"""The proxy process under load (TAP): zero failed requests across 10 release
switches, then a SIGKILL of the proxy (failures counted and reported), then a
live upgrade by socket hand-over (zero failed requests).

Everything runs on 127.0.0.1: the proxy (build/tests/helpers/proxy_run, the
same proxy_main that `slipway-agent proxy` runs), testsrv backends (the
harness's static build, $SLIPWAY_TEST_TESTSRV) and wrk with a Lua script that
counts non-2xx answers and the X-Release values seen. Side traffic crosses
every switch: slow requests, POSTs with bodies, and an open WebSocket.
"""
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from tap import Tap  # noqa: E402

TOP = os.environ.get("SLIPWAY_TOP") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SLIPWAY_BUILD") or os.path.join(TOP, "build")
PROXY = os.path.join(BUILD, "tests", "helpers", "proxy_run")
TESTSRV = os.environ.get("SLIPWAY_TEST_TESTSRV") or os.path.join(BUILD, "images", "testsrv")
RELEASES = 10
BACKENDS_PER_RELEASE = 2
HOST = "web.example.com"

WRK_LUA = r"""
local counts = {}
non2xx = 0
releases = ""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  local r = headers["X-Release"] or "none"
  if not counts[r] then
    counts[r] = true
    releases = releases .. r .. ","
  end
end
function done(summary, latency, requests)
  local bad, seen = 0, {}
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    for r in string.gmatch(t:get("releases"), "([^,]+)") do seen[r] = true end
  end
  local list = {}
  for r, _ in pairs(seen) do table.insert(list, r) end
  table.sort(list)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d non2xx=%d connect=%d read=%d write=%d " ..
    "timeout=%d status=%d releases=%s p99_us=%d\n", summary.requests, bad, e.connect, e.read,
    e.write, e.timeout, e.status, table.concat(list, ","), latency:percentile(99)))
end
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Ctl:
    """HTTP/1.1 over the proxy's unix control socket."""

    def __init__(self, path):
        self.path = path

    def call(self, method, path, body=None, timeout=30):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.path)
        data = json.dumps(body).encode() if body is not None else b""
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        return status, json.loads(rest) if rest else None

    def alive(self):
        try:
            return self.call("GET", "/v1/health", timeout=2)[0] == 200
        except OSError:
            return False


def wait_until(fn, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.02)
    return False


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="slipway-proxy-it-")
        self.sock = os.path.join(self.dir, "proxy.sock")
        self.conf = os.path.join(self.dir, "agent.conf")
        with open(self.conf, "w") as f:
            f.write(f"agent.state_dir = {self.dir}\nproxy.bind = 127.0.0.1\n"
                    f"proxy.stop_timeout = 15s\nlog.level = info\n")
        self.ctl = Ctl(self.sock)
        self.port = free_port()
        self.procs = []
        self.backends = {}   # release -> [(id, proc, port)]

    def start_proxy(self, wait=True):
        log = open(os.path.join(self.dir, "proxy.log"), "ab")
        p = subprocess.Popen([PROXY, "proxy", "--config", self.conf], stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        if wait and not wait_until(self.ctl.alive, 10):
            raise RuntimeError("the proxy did not start: " + self.proxy_log()[-2000:])
        return p

    def proxy_log(self):
        try:
            with open(os.path.join(self.dir, "proxy.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start_release(self, release):
        out = []
        for i in range(BACKENDS_PER_RELEASE):
            env = dict(os.environ, PORT="0", RELEASE=release)
            p = subprocess.Popen([TESTSRV], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            self.procs.append(p)
            line = p.stdout.readline().decode()
            m = re.search(r"port=(\d+)", line)
            if not m:
                raise RuntimeError(f"testsrv did not start: {line!r}")
            out.append((f"{release}-{i}", p, int(m.group(1))))
        self.backends[release] = out
        return out

    def route(self, release, generation):
        body = {"generation": generation, "release": release, "listen": self.port,
                "protocol": "http", "hosts": [HOST],
                "backends": [{"id": bid, "address": f"127.0.0.1:{port}"}
                             for bid, _, port in self.backends[release]]}
        return self.ctl.call("PUT", "/v1/routes/web/web", body)

    def stop_release(self, release):
        for _, p, _ in self.backends.pop(release):
            p.send_signal(signal.SIGTERM)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def start_wrk(env, seconds, connections=64):
    script = os.path.join(env.dir, "count.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                             "-H", f"Host: {HOST}", "-s", script,
                             f"http://127.0.0.1:{env.port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def wrk_result(proc, stop=False):
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    m = re.search(r"RESULT (.*)", out)
    if not m:
        raise RuntimeError("wrk printed no result:\n" + out)
    res = {}
    for kv in m.group(1).split():
        k, v = kv.split("=", 1)
        res[k] = v if k == "releases" else int(v)
    res["raw"] = out
    return res


class Side(threading.Thread):
    """Slow requests or POSTs in a loop on one keep-alive connection."""

    def __init__(self, port, kind):
        super().__init__(daemon=True)
        self.port, self.kind = port, kind
        self.stop = threading.Event()
        self.ok = 0
        self.errors = []

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                if self.kind == "slow":
                    conn.request("GET", "/slow?ms=700", headers={"Host": HOST})
                    r = conn.getresponse()
                    body = r.read()
                    good = r.status == 200 and body.startswith(b"slow")
                else:
                    payload = os.urandom(random.randint(1, 40000))
                    conn.request("POST", "/echo", body=payload, headers={"Host": HOST})
                    r = conn.getresponse()
                    body = r.read()
                    good = r.status == 200 and body == payload
                if good:
                    self.ok += 1
                else:
                    self.errors.append(f"{self.kind}: status {r.status}")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"{self.kind}: {e!r}")
                conn = None


class WebSocket:
    """Just enough RFC 6455 for an echo: masked text frames out, frames in."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = self.s.recv(1)
            if not c:
                raise OSError("closed during the handshake")
            head += c
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError("no upgrade: " + head.decode(errors="replace").splitlines()[0])
        m = re.search(rb"X-Release: (\S+)", head)
        self.release = m.group(1).decode() if m else "?"

    def echo(self, text):
        data = text.encode()
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | len(data)]) + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(data))
        self.s.sendall(frame)
        hdr = self._read(2)
        n = hdr[1] & 0x7F
        got = self._read(n).decode()
        if got != text:
            raise OSError(f"echo {got!r} != {text!r}")

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise OSError("websocket closed")
            buf += c
        return buf

    def close(self):
        mask = os.urandom(4)
        self.s.sendall(bytes([0x88, 0x80]) + mask)
        try:
            self._read(2)
        except OSError:
            pass
        self.s.close()


def main():
    t = Tap(13)
    for path, what in ((PROXY, "proxy_run"), (TESTSRV, "testsrv")):
        if not os.access(path, os.X_OK):
            for _ in range(13):
                t.fail(f"{what} missing", path)
            return t.done()
    env = Env()
    try:
        return run(t, env)
    finally:
        env.cleanup()


def run(t, env):
    env.start_proxy()
    env.start_release("r1")
    status, _ = env.route("r1", 1)
    t.check("first route set", status == 200, f"status {status}")

    wrk = start_wrk(env, 120)
    sides = [Side(env.port, "slow"), Side(env.port, "slow"), Side(env.port, "post")]
    for s in sides:
        s.start()
    time.sleep(1.0)
    ws_errors = []
    drain_problems = []
    swap_times = []
    for n in range(2, RELEASES + 1):
        rel, old = f"r{n}", f"r{n - 1}"
        t0 = time.monotonic()
        env.start_release(rel)
        try:
            ws = WebSocket(env.port)
            ws.echo(f"before {rel}")
        except OSError as e:
            ws_errors.append(f"{rel} open: {e}")
            ws = None
        status, ans = env.route(rel, n)
        if status != 200:
            drain_problems.append(f"PUT {rel}: {status} {ans}")
        try:
            if ws:
                ws.echo(f"after {rel}")   # still on the old container
                if ws.release != old:
                    ws_errors.append(f"{rel}: websocket on {ws.release}, expected {old}")
                ws.close()
        except OSError as e:
            ws_errors.append(f"{rel} across the switch: {e}")
        ids = [bid for bid, _, _ in env.backends[old]]
        status, ans = env.ctl.call("POST", "/v1/routes/web/web/drain",
                                   {"backends": ids, "timeout_ms": 10000})
        if status != 200 or not ans.get("drained"):
            drain_problems.append(f"drain {old}: {status} {ans}")
        env.stop_release(old)
        swap_times.append(time.monotonic() - t0)
    time.sleep(1.5)   # the last release serves for a while
    res = wrk_result(wrk, stop=True)
    for s in sides:
        s.stop.set()
    for s in sides:
        s.join(timeout=20)
    seen = set(res["releases"].split(",")) - {""}
    want = {f"r{n}" for n in range(1, RELEASES + 1)}
    print(f"# swaps: {RELEASES - 1} in {sum(swap_times):.1f}s; wrk: {res['requests']} requests, "
          f"p99 {res['p99_us'] / 1000:.1f} ms")
    t.check("wrk: 0 non-2xx across 9 switches", res["non2xx"] == 0, res["raw"])
    socket_errors = res["connect"] + res["read"] + res["write"] + res["timeout"]
    t.check("wrk: 0 socket errors", socket_errors == 0, res["raw"])
    t.check("all 10 releases answered", seen == want, f"seen {sorted(seen)}")
    t.check("drains drained, routes switched", not drain_problems, "\n".join(drain_problems))
    side_errors = [e for s in sides for e in s.errors]
    side_ok = sum(s.ok for s in sides)
    t.check(f"slow requests and POSTs crossed the switches ({side_ok} ok)",
            not side_errors and side_ok > 10, "\n".join(side_errors[:20]))
    t.check("an open WebSocket crossed each switch", not ws_errors, "\n".join(ws_errors))

    # SIGKILL of the proxy under load, restarted at once (as systemd would).
    # wrk gives the load; probe clients tell the failures apart: a request
    # sent before the kill that fails was in flight; one sent after it, while
    # no process listens, is refused.
    wrk = start_wrk(env, 5)
    probes = [Probe(env.port) for _ in range(16)]
    for pr in probes:
        pr.start()
    time.sleep(2.0)
    old = [p for p in env.procs if p.args[0] == PROXY and p.poll() is None]
    t_kill = time.monotonic()
    for p in old:
        p.kill()
        p.wait()
    env.start_proxy(wait=False)
    up = wait_until(lambda: probe(env.port), 10)
    downtime = time.monotonic() - t_kill
    res = wrk_result(wrk)
    for pr in probes:
        pr.stop.set()
    for pr in probes:
        pr.join(timeout=20)
    inflight = sum(1 for pr in probes for sent, _ in pr.failures if sent < t_kill)
    refused = sum(1 for pr in probes for sent, _ in pr.failures if sent >= t_kill)
    probe_ok = sum(pr.ok for pr in probes)
    print(f"# SIGKILL under load (proxy down {downtime * 1000:.0f} ms, restarted at once): "
          f"probe clients: {probe_ok} ok, {inflight} failed that were in flight at the kill "
          f"(of 16 clients), {refused} refused while no process listened; wrk (64 conns): "
          f"{res['requests']} ok, socket errors read {res['read']} write {res['write']} "
          f"connect {res['connect']} timeout {res['timeout']} (in flight plus reconnect "
          f"attempts during the restart), non-2xx {res['non2xx']}")
    t.check("restarted proxy serves the stored routes", up, env.proxy_log()[-2000:])
    t.check("SIGKILL: of the requests sent before the kill only those in flight failed",
            inflight <= len(probes) and probe_ok > 0 and res["non2xx"] == 0,
            f"in flight {inflight}, ok {probe_ok}\n" + res["raw"])
    wrk = start_wrk(env, 2)
    res = wrk_result(wrk)
    bad = res["non2xx"] + res["connect"] + res["read"] + res["write"] + res["timeout"]
    t.check("after the restart: 0 failed requests", bad == 0 and res["requests"] > 0, res["raw"])

    # Live upgrade: a new proxy process takes the sockets over under load.
    _, h = env.ctl.call("GET", "/v1/health")
    old_pid = h["pid"]
    old_proc = [p for p in env.procs if p.args[0] == PROXY and p.poll() is None][-1]
    wrk = start_wrk(env, 6)
    time.sleep(2.0)
    env.start_proxy(wait=False)
    took = wait_until(lambda: health_pid(env) not in (None, old_pid), 10)
    try:
        old_proc.wait(timeout=20)
        old_exit = old_proc.returncode
    except subprocess.TimeoutExpired:
        old_exit = None
    res = wrk_result(wrk)
    bad = res["non2xx"] + res["connect"] + res["read"] + res["write"] + res["timeout"]
    print(f"# hand-over under load: {res['requests']} requests, {bad} failed, "
          f"releases {res['releases']}")
    t.check("hand-over: the new process answers on the control socket", took,
            env.proxy_log()[-3000:])
    t.check("hand-over under load: 0 failed requests", bad == 0 and res["requests"] > 0,
            res["raw"])
    t.check("hand-over: the old process finished and exited 0", old_exit == 0,
            f"exit {old_exit}\n" + env.proxy_log()[-3000:])
    return t.done()


class Probe(threading.Thread):
    """GETs on a keep-alive connection; failures with the time the request left."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []

    def run(self):
        conn = None
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/", headers={"Host": HOST})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failures.append((sent, f"status {r.status}"))
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((sent, repr(e)))
                conn = None
                time.sleep(0.005)


def probe(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/", headers={"Host": HOST})
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def health_pid(env):
    try:
        status, h = env.ctl.call("GET", "/v1/health", timeout=2)
        return h["pid"] if status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
