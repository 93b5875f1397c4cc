#!/usr/bin/env python3
"""Scale-in under load (issue 8, docs/operations.md "Scale-in"): the real
slipway-agent with its proxy and real containers, the fake coordinator, and
AWS fakes: tests/fakes/imds.py (the instance's role credentials, its
lifecycle state, spot notices, the group's name tag), tests/fakes/autoscaling.py
(the termination lifecycle hook; signatures checked) and tests/fakes/cloudwatch.py
as the log destination (it records when each batch was accepted).

Case 1, the termination lifecycle hook: under wrk load and probe clients
(some of them make the containers write a log line per request), the group
starts the hook and the instance's lifecycle state turns Terminated. The
agent must: answer 503 on its health endpoint (and tell the coordinator
draining: true) with 0 failed requests until then, wait out the
deregistration delay (still serving: 0 failed requests until the drain
begins), drain, stop the containers, wait until the last log line each
container wrote was accepted by CloudWatch (made slow on purpose), heartbeat
the hook meanwhile, and only then CompleteLifecycleAction (CONTINUE) for the
right group (from the instance's tag), hook and instance.
Case 2, a spot interruption notice: the same drain, no lifecycle action
completed while no hook runs; a hook that starts afterwards is completed.
The figures (requests, failures before and after the drain) are printed.
"""
import datetime
import http.client
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()

FAKES = os.path.join(L.TOP, "tests", "fakes")
AKID, SECRET, TOKEN = "ASIASCALEINTEST00001", "scalein-test-secret", "scalein-session-token"
GROUP_SUFFIX = "-agents"
HOOK = "slipway-drain"
DEREG_S = 2.0
HEALTH = "/_slipway/health"


def start_fake(name, *args):
    p = subprocess.Popen([sys.executable, os.path.join(FAKES, name), *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


def call(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def log_events(text, name):
    """Wall times (epoch s) of the agent's log lines with this event name."""
    out = []
    for m in re.finditer(r"^(\S+Z) \w+ " + re.escape(name) + r"\b", text, re.M):
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
        out.append(t.replace(tzinfo=datetime.timezone.utc).timestamp())
    return out


class Client(threading.Thread):
    """A keep-alive client asking `path` in a loop; every answer with its time."""

    def __init__(self, port, path):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.stop_flag = False
        self.results = []         # (wall s at the answer, ok, what)
        self.lock = threading.Lock()

    def run(self):
        conn = None
        while not self.stop_flag:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path)
                r = conn.getresponse()
                r.read()
                ok = 200 <= r.status < 300
                with self.lock:
                    self.results.append((time.time(), ok, f"HTTP {r.status}"))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.results.append((time.time(), False, repr(e)))
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.01)

    def stop(self):
        self.stop_flag = True
        self.join(15)


class HealthCheck(threading.Thread):
    """What the load balancer does: a new connection to the health path every 50 ms."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_flag = False
        self.seen = []            # (wall s, status or 0)

    def run(self):
        while not self.stop_flag:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", HEALTH)
                st = c.getresponse().status
                c.close()
            except (OSError, http.client.HTTPException):
                st = 0
            self.seen.append((time.time(), st))
            time.sleep(0.05)

    def first(self, status):
        return next((t for t, s in self.seen if s == status), None)

    def stop(self):
        self.stop_flag = True
        self.join(5)


class Case:
    """One agent on its own Docker network with its own fake IMDS."""

    def __init__(self, name, coord, asg, cw):
        self.env = L.Env(name)
        self.coord, self.asg_port, self.cw_port = coord, asg, cw
        self.instance = "i-0" + self.env.run + "0123456789"
        self.group = "slipway-" + self.env.run + GROUP_SUFFIX
        # An app of its own: agents of tests running beside this one (same engine, same
        # run label) deploy "web" too, and retire each other's old containers.
        self.app = name + "-" + self.env.run
        self.imds, self.imds_port = start_fake("imds.py", "--access-key-id", AKID,
                                               "--secret-access-key", SECRET, "--token", TOKEN,
                                               "--instance-id", self.instance)
        call(self.imds_port, "POST", "/_control",
             {"tags": {"aws:autoscaling:groupName": self.group}})
        self.port = L.free_port()
        self.agent = self.env.agent(coord, instance=name, extra={
            "agent.instance_id": None,          # from the instance metadata
            "cloudwatch.region": "us-east-1",
            "cloudwatch.endpoint": f"http://127.0.0.1:{cw}",
            "logs.flush_interval": "200ms",
            "aws.autoscaling_endpoint": f"http://127.0.0.1:{asg}",
            "lifecycle.enabled": "true",
            "lifecycle.hook_name": HOOK,
            "lifecycle.poll_interval": "200ms",
            "lifecycle.deregistration_delay": f"{int(DEREG_S * 1000)}ms",
            "lifecycle.drain_timeout": "5s",
            "lifecycle.stop_timeout": "30s",
            "lifecycle.log_flush_timeout": "30s",
            "lifecycle.heartbeat_interval": "1s",
            "metadata.block": "on",
        })
        self.clients, self.health, self.wrk = [], None, None
        self.closed = False

    def start(self):
        self.agent.start({"AWS_EC2_METADATA_SERVICE_ENDPOINT":
                          f"http://127.0.0.1:{self.imds_port}"})
        return L.wait_for(lambda: [a for a in self.coord.agents()
                                   if a.get("instance_id") == self.instance], 30, 0.1)

    def deploy(self, gen, extra=()):
        rel = L.release(f"r{gen}", self.app, [L.service(
            image=L.IMAGE_V1, env={"RELEASE": "v1"}, listen=self.port, count=2,
            stop_grace_ms=3000)] + list(extra))
        agent_id = [a for a in self.coord.agents() if a.get("instance_id") == self.instance]
        job = self.coord.job({"type": "deploy", "app": self.app, "generation": gen,
                              "release": rel}, agent=agent_id[0]["id"])
        return self.coord.wait_result(job, 120)

    def load(self, wrk=True):
        for path in ("/", "/", "/log?n=1&size=60", "/log?n=1&size=60"):
            c = Client(self.port, path)
            c.start()
            self.clients.append(c)
        self.health = HealthCheck(self.port)
        self.health.start()
        if wrk:
            self.wrk = L.Wrk(self.env, self.port, 120, connections=32)

    def wait_log(self, name, timeout):
        return L.wait_for(lambda: log_events(self.agent.log_text(), name), timeout, 0.02)

    def results(self):
        out = []
        for c in self.clients:
            with c.lock:
                out += c.results
        return sorted(out)

    def stop_load(self):
        for c in self.clients:
            c.stop()
        if self.health:
            self.health.stop()
        if self.wrk:
            self.wrk.interrupt()

    def app_containers(self, service="web"):
        return [c for c in self.env.mine() if c["Labels"].get("slipway.app") == self.app and
                c["Labels"].get("slipway.service") == service]

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.stop_load()
        self.imds.kill()
        self.env.close()
        drop_block_rules(self.env.network)


def iptables_rules():
    p = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True)
    return p.stdout.splitlines() if p.returncode == 0 else None


def drop_block_rules(network):
    """The block's rules stay when the agent goes (containers keep running); a test removes
    the ones of its network."""
    for line in iptables_rules() or []:
        if f"slipway-imds:{network}:" in line and line.startswith("-A DOCKER-USER "):
            args = shlex.split(line)[2:]  # -S quotes the comments
            subprocess.run(["iptables", "-w", "-D", "DOCKER-USER", *args], capture_output=True)


def last_seqs_written(case):
    """Per container: the highest seq of the log lines it wrote (Docker's log file)."""
    out = {}
    for c in case.app_containers():
        text = L.container_logs(c["Id"], tail=50)
        seqs = [int(x) for x in re.findall(r"testsrv log seq=(\d+)", text)]
        out[c["Id"][:12]] = max(seqs) if seqs else 0
    return out


def cloudwatch_streams(case):
    """Per container (12 hex): the stream's summary at the fake."""
    out = {}
    for s in call(case.cw_port, "GET", "/_fake/streams")["streams"]:
        parts = s["stream"].split("/")
        if s["group"] == "/slipway/" + case.app and len(parts) == 3 and \
                parts[1] == case.instance:
            out[parts[2]] = s
    return out


def max_seq(stream):
    return max((v.get("max", 0) for v in stream.get("seqs", {}).values()), default=0)


def actions_of(asg_port, instance):
    return [a for a in call(asg_port, "GET", "/_fake/lifecycle")["actions"]
            if a["instance_id"] == instance]


def split_at(results, t):
    before = [r for r in results if r[0] < t]
    after = [r for r in results if r[0] >= t]
    return before, [r for r in before if not r[1]], [r for r in after if not r[1]]


def hook_case(t, case):
    reg = case.start()
    res = case.deploy(1) if reg else None
    t.check("hook: the agent (instance id from IMDS) registers and deploys two containers",
            res and res.get("result") == "succeeded" and len(case.app_containers()) == 2,
            json.dumps(res) + case.agent.log_text()[-2000:])
    rules = iptables_rules()
    if rules is None:
        t.ok("metadata block: DROP for the network's subnet # SKIP no iptables here")
    else:
        mine = L.wait_for(lambda: [r for r in iptables_rules() or []
                                   if f"slipway-imds:{case.env.network}:block" in r and
                                   "169.254.169.254/32" in r and "-j DROP" in r], 10, 0.1)
        t.check("metadata block: DOCKER-USER drops the network's traffic to 169.254.169.254",
                mine, "\n".join(iptables_rules() or []) + case.agent.log_text()[-1500:])

    case.load()
    time.sleep(2.0)
    # The group scales this instance in: its hook starts, the metadata says Terminated.
    call(case.asg_port, "POST", "/_fake/lifecycle",
         {"group": case.group, "hook": HOOK, "instance_id": case.instance})
    t_flip = time.time()
    call(case.imds_port, "POST", "/_control", {"lifecycle_state": "Terminated"})
    case.wait_log("lifecycle.draining", 30)
    case.wrk.interrupt()            # wrk's figures: everything before the drain
    # The destination turns slow just when the last lines go out.
    case.wait_log("awsmode.stopping", 60)
    call(case.cw_port, "POST", "/_fake/fault", {"kind": "slow", "ms": 1500, "seconds": 6})
    done = L.wait_for(lambda: [a for a in actions_of(case.asg_port, case.instance)
                               if a["state"] != "pending"], 90, 0.1)
    time.sleep(0.5)
    case.stop_load()
    w = case.wrk.result()
    log = case.agent.log_text()
    t_unhealthy = (log_events(log, "awsmode.unhealthy") or [0])[0]
    t_drain = (log_events(log, "lifecycle.draining") or [0])[0]
    t_stopping = (log_events(log, "awsmode.stopping") or [0])[0]
    t_flushed = (log_events(log, "awsmode.logs_flushed") or [0])[0]
    t_complete = (log_events(log, "lifecycle.complete") or [0])[0]
    results = case.results()
    before, bad_before, bad_after = split_at(results, t_drain or time.time())
    print(f"# hook: wrk until the drain: {w['requests']} requests, {w['non2xx']} non-2xx, "
          f"{w['socket_errors']} socket errors; probes: {len(before)} requests before the "
          f"drain, {len(bad_before)} failed; {len(results) - len(before)} after, "
          f"{len(bad_after)} failed (containers stopped)")
    print(f"# hook: unhealthy +{t_unhealthy - t_flip:.2f} s, drain +{t_drain - t_flip:.2f} s, "
          f"stop +{t_stopping - t_flip:.2f} s, logs flushed +{t_flushed - t_flip:.2f} s, "
          f"complete +{t_complete - t_flip:.2f} s after the state turned Terminated")
    t.check("hook: under wrk load, 0 failed requests until the drain began",
            w["requests"] > 500 and w["non2xx"] == 0 and w["socket_errors"] == 0,
            w["text"])
    t.check("hook: probe clients (logging requests too): 0 failed until the drain began",
            len(before) > 100 and not bad_before, bad_before[:5])
    h503 = case.health.first(503)
    h200 = case.health.first(200)
    t.check("hook: the health endpoint answered 200, then 503 before the drain, a "
            "deregistration delay ahead of it",
            h200 and h503 and h200 < h503 and t_drain and h503 < t_drain and
            t_drain - h503 >= DEREG_S - 0.3,
            json.dumps([h200, h503, t_drain, case.health.seen[-3:]]))
    hb = [a for a in case.coord.agents() if a.get("instance_id") == case.instance]
    t.check("hook: the coordinator heard draining: true",
            hb and (hb[0].get("last_heartbeat") or {}).get("draining") is True, json.dumps(hb))
    states = [c["State"] for c in case.app_containers()]
    t.check("hook: the containers are stopped", states and all(s == "exited" for s in states),
            json.dumps(states))
    acts = actions_of(case.asg_port, case.instance)
    t.check("hook: CompleteLifecycleAction CONTINUE for the group (from the instance's tag), "
            "the hook and the instance", done and len(acts) == 1 and
            acts[0]["state"] == "CONTINUE" and acts[0]["group"] == case.group and
            acts[0]["hook"] == HOOK, json.dumps(acts) + log[-3000:])
    written = last_seqs_written(case)
    streams = cloudwatch_streams(case)
    shipped = {k: max_seq(streams.get(k, {})) for k in written}
    last_wall = max((streams[k].get("last_wall") or 0 for k in written if k in streams),
                    default=0)
    completed = acts[0]["completed_wall"] if acts else None
    t.check("hook: the action was completed only after the last line each container wrote "
            "was accepted (CloudWatch slow on purpose)",
            written and all(v > 0 for v in written.values()) and shipped == written and
            completed and last_wall and completed > last_wall and
            t_stopping < t_flushed <= t_complete,
            json.dumps({"written": written, "shipped": shipped, "last_wall": last_wall,
                        "completed": completed, "flushed": t_flushed}))
    t.check("hook: heartbeats kept the hook alive while it waited",
            acts and acts[0]["heartbeats"] >= 2 and
            len([x for x in log_events(log, "lifecycle.heartbeat") if x < t_complete]) >= 2,
            json.dumps(acts))


def block_rules(network):
    return [r for r in iptables_rules() or [] if f"slipway-imds:{network}:" in r]


def spot_case(t, case):
    reg = case.start()
    # A worker that opts in to the instance metadata (manifest: metadata_access: true).
    meta = L.service(name="meta", env={"RELEASE": "meta"}, count=1, stop_grace_ms=1000)
    meta["metadata_access"] = True
    res = case.deploy(1, [meta]) if reg else None
    t.check("spot: a second agent registers and deploys web and a metadata_access worker",
            res and res.get("result") == "succeeded", json.dumps(res))
    if iptables_rules() is None:
        t.ok("metadata block: ACCEPT above the DROP for the opted-in container only # SKIP "
             "no iptables here")
    else:
        mc = case.app_containers("meta")
        st, insp = L.docker("GET", f"/containers/{mc[0]['Id']}/json") if mc else (0, {})
        ip = (insp.get("NetworkSettings", {}).get("Networks", {}).get(case.env.network, {})
              .get("IPAddress") if isinstance(insp, dict) else None)

        def allowed():
            rules = block_rules(case.env.network)
            allow = [i for i, r in enumerate(rules) if f":allow:{mc[0]['Id'][:12]}" in r and
                     f"-s {ip}/32" in r and "-j ACCEPT" in r]
            drop = [i for i, r in enumerate(rules) if ":block" in r and "-j DROP" in r]
            others = [r for r in rules if ":allow:" in r and mc[0]["Id"][:12] not in r]
            return allow and drop and allow[0] < drop[0] and not others
        t.check("metadata block: an ACCEPT above the DROP for the opted-in container only",
                mc and ip and L.wait_for(allowed, 10, 0.1),
                json.dumps([ip, block_rules(case.env.network)]))
    case.load(wrk=False)
    time.sleep(1.5)
    before_calls = call(case.asg_port, "GET", "/_fake/stats")["requests"].get(
        "CompleteLifecycleAction", 0)
    call(case.imds_port, "POST", "/_control", {"spot_action": {"action": "terminate",
                                                               "in_s": 120}})
    drained = case.wait_log("lifecycle.drained", 60)
    case.stop_load()
    log = case.agent.log_text()
    t_drain = (log_events(log, "lifecycle.draining") or [0])[0]
    results = case.results()
    before, bad_before, bad_after = split_at(results, t_drain or time.time())
    h503 = case.health.first(503)
    print(f"# spot: probes: {len(before)} requests before the drain, {len(bad_before)} "
          f"failed; {len(results) - len(before)} after, {len(bad_after)} failed")
    t.check("spot: the notice drains: 503 first, 0 failed requests until the drain began",
            "spot interruption" in log and h503 and t_drain and h503 < t_drain and
            len(before) > 50 and not bad_before, json.dumps([h503, t_drain, bad_before[:5]]))
    states = [c["State"] for c in case.app_containers()]
    after_calls = call(case.asg_port, "GET", "/_fake/stats")["requests"].get(
        "CompleteLifecycleAction", 0)
    t.check("spot: containers stopped, logs flushed, no lifecycle action completed (no hook)",
            drained and states and all(s == "exited" for s in states) and
            log_events(log, "awsmode.logs_flushed") and after_calls == before_calls,
            json.dumps([states, before_calls, after_calls]) + log[-2000:])
    if iptables_rules() is None:
        t.ok("metadata block: the stopped container's ACCEPT is gone # SKIP no iptables here")
    else:
        gone = L.wait_for(lambda: not [r for r in block_rules(case.env.network)
                                       if ":allow:" in r], 10, 0.1)
        t.check("metadata block: the stopped container's ACCEPT is gone, the DROP stays",
                gone and [r for r in block_rules(case.env.network) if ":block" in r],
                json.dumps(block_rules(case.env.network)))
    # The group starts its hook later (the instance goes anyway): completed at once.
    call(case.asg_port, "POST", "/_fake/lifecycle",
         {"group": case.group, "hook": HOOK, "instance_id": case.instance})
    call(case.imds_port, "POST", "/_control", {"lifecycle_state": "Terminated"})
    done = L.wait_for(lambda: [a for a in actions_of(case.asg_port, case.instance)
                               if a["state"] == "CONTINUE"], 30, 0.1)
    t.check("spot: a termination hook that starts afterwards is completed (CONTINUE)", done,
            json.dumps(actions_of(case.asg_port, case.instance)) + case.agent.log_text()[-2000:])


def main():
    t = Tap(16)
    asg, asg_port = start_fake("autoscaling.py", "--access-key", AKID, "--secret-key", SECRET,
                               "--token", TOKEN)
    cw, cw_port = start_fake("cloudwatch.py", "--access-key", AKID, "--secret-key", SECRET,
                             "--token", TOKEN)
    coord = L.Coordinator(lease_s=10, heartbeat_s=1)
    cases = []
    try:
        cases.append(Case("scalein", coord, asg_port, cw_port))
        hook_case(t, cases[-1])
        cases[-1].close()
        call(cw_port, "POST", "/_fake/clear")
        cases.append(Case("spot", coord, asg_port, cw_port))
        spot_case(t, cases[-1])
    finally:
        for c in cases:
            c.close()
        coord.close()
        asg.kill()
        cw.kill()
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
