#!/usr/bin/env python3
"""A fake slipway-coordinator: the agent side of docs/protocol.md, for tests.

    coordinator.py [--bootstrap-token T] [--lease-s N] [--heartbeat-s N]
                   [--lost-after-s N] [--max-wait-s N]

Binds 127.0.0.1 port 0 and prints the port on the first stdout line. Standard
library only (ThreadingHTTPServer).

Agent API (docs/protocol.md): register (bootstrap token, per-agent tokens
stored as SHA-256, same instance_id keeps its agent_id and gets a new token),
heartbeat, long poll (wait <= 30 s, one poll at a time per agent: a new one
ends the previous with an empty list), leases with a visibility timeout and
redelivery with attempt + 1 (5 attempts, then failed "lease expired 5 times"),
extend (410 lease_lost when the lease is gone), ack (idempotent for the same
result, 409 for a contradicting one, accepted after the lease expired as long
as no other attempt acknowledged it), inventory, desired, and the embedded
mode's logs (POST .../logs: checked against the batch rules, answered
{"accepted", "rejected"}; a batch that breaks them is refused whole with 400)
and metrics (POST .../metrics, answered {"accepted"}; the latest batch is
kept). Every answer carries Slipway-Protocol: 1; requests without it get 400
protocol_unsupported. Bodies over 1 MiB (logs: 4 MiB) get 413; gzip request
bodies are inflated under the same cap. On registration every app with a
desired state gets a deploy job, as the protocol says.

Control API for tests (not part of the protocol; no auth):
  GET  /_fake/agents                 agents: id, instance_id, heartbeats, last heartbeat
  POST /_fake/desired                {"app", "generation", "release": spec|null,
                                      "type": "deploy"|"remove", "enqueue": true}
                                     sets the desired state; enqueue queues a job
                                     for every registered agent; answers {"jobs": [ids]}
  POST /_fake/jobs                   {"agent": id (default: the only/first agent),
                                      "job": {...}} queues a raw job: the fake adds
                                      id, lease_id, lease_expires_in_s and attempt
                                      unless the job has them or names them in
                                      "omit": [...]; answers {"id"}
  GET  /_fake/jobs                   every job: id, state, attempt, lease_id, result
  GET  /_fake/acks                   every ack received (in order), with status answered
  GET  /_fake/inventory              {"agents": {id: {"puts": n, "containers": [...]}}}
  POST /_fake/fault                  {"kind": "500"|"drop"|"410_extend"|"down",
                                      "count": N, "seconds": S, "path": "substring"}
                                      500: answer 500 unavailable; drop: close the
                                      connection without answering; down: drop every
                                      agent request for S seconds; 410_extend: the
                                      next N extends lose their lease (job requeued)
  POST /_fake/expire                 {"job": id}: the lease expires now
  GET  /_fake/requests               counts of agent requests by kind
  GET  /_fake/logs                   {"agents": {id: {"posts", "events", "rejected",
                                      "streams": {"app/service/container": n},
                                      "last": [the newest 1000 events, each with
                                      app, service, container, release]}}}
  GET  /_fake/metrics                {"agents": {id: {"posts", "metrics": the latest
                                      batch}}}
"""
import argparse
import collections
import gzip
import hashlib
import io
import json
import secrets
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
MAX_LOGS_BODY = 4 << 20
BATCH_EVENTS, BATCH_BYTES, EVENT_OVERHEAD = 10000, 1 << 20, 26
METRICS_MAX = 1000
LOGS_KEPT = 1000
MAX_ATTEMPTS = 5


def now_ms():
    return int(time.time() * 1000)


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Condition()
        self.agents = {}          # agent_id -> dict
        self.by_instance = {}     # instance_id -> agent_id
        self.tokens = {}          # sha256(token) -> agent_id
        self.jobs = {}            # job id -> dict
        self.order = []           # job ids in queue order
        self.acks = []
        self.desired = {}         # app -> {"generation", "release", "type"}
        self.inventory = {}       # agent_id -> {"puts", "containers"}
        self.logs = {}            # agent_id -> {"posts", "events", "rejected", "streams", "last"}
        self.metrics = {}         # agent_id -> {"posts", "metrics"}
        self.faults = []          # dicts with kind, count, path
        self.down_until = 0.0
        self.requests = {}
        self.seq = 0
        self.poll_gen = {}        # agent_id -> generation of its current poll

    def next_id(self, prefix):
        self.seq += 1
        return f"{prefix}_{self.seq:04d}{secrets.token_hex(2)}"

    # -- jobs --
    def enqueue(self, agent_id, job, omit=()):
        job = dict(job)
        jid = job.get("id") or self.next_id("j")
        if "id" not in omit:
            job["id"] = jid
        rec = {"id": jid, "agent": agent_id, "body": job, "omit": list(omit),
               "state": "queued", "attempt": 0, "lease_id": None, "expires": 0.0,
               "result": None, "ack": None, "visible_at": 0.0}
        self.jobs[jid] = rec
        self.order.append(jid)
        self.lock.notify_all()
        return jid

    def enqueue_desired(self, agent_id, app):
        d = self.desired[app]
        body = {"type": d["type"], "app": app, "generation": d["generation"],
                "release": d["release"]}
        return self.enqueue(agent_id, body)

    def expire_leases(self):
        t = time.time()
        changed = False
        for rec in self.jobs.values():
            if rec["state"] == "leased" and rec["expires"] <= t:
                self.requeue(rec)
                changed = True
        if changed:
            self.lock.notify_all()

    def requeue(self, rec):
        if rec["attempt"] >= MAX_ATTEMPTS:
            rec["state"] = "failed"
            rec["result"] = "failed"
            rec["reason"] = f"lease expired {MAX_ATTEMPTS} times"
        else:
            rec["state"] = "queued"
        rec["lease_id"] = None

    def take(self, agent_id, maximum):
        out = []
        for jid in self.order:
            rec = self.jobs[jid]
            if rec["agent"] != agent_id or rec["state"] != "queued":
                continue
            rec["attempt"] += 1
            rec["state"] = "leased"
            rec["lease_id"] = self.next_id("l")
            rec["expires"] = time.time() + self.args.lease_s
            body = dict(rec["body"])
            for k, v in (("lease_id", rec["lease_id"]),
                         ("lease_expires_in_s", self.args.lease_s),
                         ("attempt", rec["attempt"])):
                if k not in rec["omit"] and k not in body:
                    body[k] = v
            if "lease_id" in rec["body"]:
                rec["lease_id"] = rec["body"]["lease_id"]
            out.append(body)
            if len(out) >= maximum:
                break
        return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-coordinator"

    def log_message(self, fmt, *args):  # quiet
        if self.server.state.args.verbose:
            sys.stderr.write("fake-coordinator: " + (fmt % args) + "\n")

    # -- plumbing --
    def send(self, status, doc, extra=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Slipway-Protocol", "1")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, code, message, extra=None):
        self.send(status, {"error": {"code": code, "message": message}}, extra)

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def body(self, cap=MAX_BODY):
        n = int(self.headers.get("Content-Length") or 0)
        if n > cap:
            self.error(413, "too_large", f"body over {cap >> 20} MiB")
            return None
        raw = self.rfile.read(n) if n else b""
        if raw and self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(cap + 1)
            except (OSError, EOFError):
                self.error(400, "bad_request", "body is not valid gzip")
                return None
            if len(raw) > cap:
                self.error(413, "too_large", f"inflated body over {cap >> 20} MiB")
                return None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            self.error(400, "bad_request", "body is not JSON")
            return None

    def fault(self, kind_of_request):
        st = self.server.state
        with st.lock:
            st.requests[kind_of_request] = st.requests.get(kind_of_request, 0) + 1
            if time.time() < st.down_until:
                return "drop"
            for f in st.faults:
                if f["count"] <= 0 or f["kind"] not in ("500", "drop"):
                    continue
                if f.get("path") and f["path"] not in self.path:
                    continue
                f["count"] -= 1
                return f["kind"]
        return None

    def agent_auth(self, agent_id):
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self.error(401, "unauthorized", "missing token")
            return None
        h = hashlib.sha256(auth[7:].encode()).hexdigest()
        with st.lock:
            owner = st.tokens.get(h)
            if agent_id not in st.agents:
                self.error(404, "not_found", f"unknown agent {agent_id}")
                return None
            if owner != agent_id:
                self.error(401, "unauthorized", "token unknown or rotated")
                return None
            return st.agents[agent_id]

    # -- dispatch --
    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["_fake"]:
            return self.control(method, parts[1:], url)
        kind = "register" if parts[-1:] == ["register"] else (parts[3] if len(parts) > 3 else "?")
        if kind == "jobs" and len(parts) > 5:
            kind = parts[5]
        f = self.fault(kind)
        if f == "drop":
            return self.drop()
        if self.headers.get("Slipway-Protocol") != "1":
            return self.error(400, "protocol_unsupported", "Slipway-Protocol: 1 required")
        if f == "500":
            return self.error(500, "unavailable", "injected fault")
        if parts[:2] != ["v1", "agents"] or len(parts) < 3:
            return self.error(404, "not_found", "no such path")
        if method == "POST" and parts[2:] == ["register"]:
            return self.register()
        agent_id = parts[2]
        rest = parts[3:]
        if method == "GET" and rest == ["jobs"]:
            return self.poll(agent_id, urllib.parse.parse_qs(url.query))
        body = self.body(MAX_LOGS_BODY if rest == ["logs"] else MAX_BODY) \
            if method in ("POST", "PUT") else {}
        if body is None:
            return
        agent = self.agent_auth(agent_id)
        if agent is None:
            return
        if method == "POST" and rest == ["heartbeat"]:
            return self.heartbeat(agent, body)
        if method == "POST" and len(rest) == 3 and rest[0] == "jobs" and rest[2] == "extend":
            return self.extend(agent, rest[1], body)
        if method == "POST" and len(rest) == 3 and rest[0] == "jobs" and rest[2] == "ack":
            return self.ack(agent, rest[1], body)
        if method == "PUT" and rest == ["inventory"]:
            return self.put_inventory(agent, body)
        if method == "GET" and rest == ["desired"]:
            return self.get_desired(agent)
        if method == "POST" and rest == ["logs"]:
            return self.post_logs(agent, body)
        if method == "POST" and rest == ["metrics"]:
            return self.post_metrics(agent, body)
        return self.error(404, "not_found", "no such path")

    # -- agent API --
    def register(self):
        st = self.server.state
        body = self.body()
        if body is None:
            return
        if self.headers.get("Authorization") != "Bearer " + st.args.bootstrap_token:
            return self.error(401, "unauthorized", "bootstrap token refused")
        for k, t in (("instance_id", str), ("hostname", str), ("fleet", str),
                     ("version", str), ("arch", str), ("protocol", int),
                     ("capabilities", list)):
            if not isinstance(body.get(k), t):
                return self.error(400, "bad_request", f"{k}: missing or wrong type")
        if body["protocol"] != 1:
            return self.error(400, "protocol_unsupported", "protocol 1 only")
        token = secrets.token_hex(48)
        with st.lock:
            aid = st.by_instance.get(body["instance_id"])
            if aid is None:
                aid = st.next_id("ag")
                st.by_instance[body["instance_id"]] = aid
                st.agents[aid] = {"id": aid, "heartbeats": 0, "registrations": 0}
            agent = st.agents[aid]
            # A new token invalidates the old one.
            for h, owner in list(st.tokens.items()):
                if owner == aid:
                    del st.tokens[h]
            st.tokens[hashlib.sha256(token.encode()).hexdigest()] = aid
            agent.update({"instance_id": body["instance_id"], "hostname": body["hostname"],
                          "version": body["version"], "seen": time.time()})
            agent["registrations"] += 1
            # A new instance gets every app's active release at once.
            for app, d in st.desired.items():
                if d["type"] == "deploy" and d["release"] is not None:
                    st.enqueue_desired(aid, app)
        self.send(200, {"agent_id": aid, "token": token,
                        "heartbeat_interval_s": st.args.heartbeat_s,
                        "lost_after_s": st.args.lost_after_s, "lease_s": st.args.lease_s,
                        "poll_wait_s": min(30, st.args.max_wait_s)})

    def heartbeat(self, agent, body):
        st = self.server.state
        with st.lock:
            agent["heartbeats"] += 1
            agent["last_heartbeat"] = body
            agent["seen"] = time.time()
        self.send(200, {"server_time_ms": now_ms()})

    def poll(self, agent_id, q):
        st = self.server.state
        agent = self.agent_auth(agent_id)
        if agent is None:
            return
        try:
            wait = min(30, st.args.max_wait_s, max(0, int(q.get("wait", ["0"])[0])))
            maximum = min(10, max(1, int(q.get("max", ["10"])[0])))
        except ValueError:
            return self.error(400, "bad_request", "wait and max are integers")
        deadline = time.time() + wait
        with st.lock:
            agent["seen"] = time.time()
            my = st.poll_gen.get(agent_id, 0) + 1
            st.poll_gen[agent_id] = my
            st.lock.notify_all()  # ends an earlier poll of this agent
            jobs = []
            while True:
                # A poll replaced by a newer one, or whose client is gone (an
                # agent killed mid-poll), must not take jobs: they would be lost
                # until their lease expires.
                if st.poll_gen.get(agent_id) != my or self.client_gone():
                    break
                st.expire_leases()
                jobs = st.take(agent_id, maximum)
                if jobs:
                    break
                left = deadline - time.time()
                if left <= 0:
                    break
                st.lock.wait(min(left, 0.1))
        self.send(200, {"jobs": jobs})

    def client_gone(self):
        r, _, _ = select.select([self.connection], [], [], 0)
        if not r:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def find_job(self, agent, job_id):
        rec = self.server.state.jobs.get(job_id)
        if rec is None or rec["agent"] != agent["id"]:
            self.error(404, "not_found", f"unknown job {job_id}")
            return None
        return rec

    def extend(self, agent, job_id, body):
        st = self.server.state
        with st.lock:
            rec = self.find_job(agent, job_id)
            if rec is None:
                return
            for f in st.faults:
                if f["kind"] == "410_extend" and f["count"] > 0:
                    f["count"] -= 1
                    if rec["state"] == "leased":
                        st.requeue(rec)
                        st.lock.notify_all()
                    return self.error(410, "lease_lost", "injected: the lease expired")
            st.expire_leases()
            if rec["state"] != "leased" or rec["lease_id"] != body.get("lease_id"):
                return self.error(410, "lease_lost", f"job {job_id} is not leased to this attempt")
            ext = body.get("extend_s")
            if not isinstance(ext, int) or ext < 1:
                return self.error(400, "bad_request", "extend_s: integer >= 1")
            rec["expires"] = time.time() + ext
            rec["extends"] = rec.get("extends", 0) + 1
        self.send(200, {"lease_expires_in_s": ext})

    def ack(self, agent, job_id, body):
        st = self.server.state
        result = body.get("result")
        if result not in ("succeeded", "failed", "superseded"):
            return self.error(400, "bad_request", "result: succeeded, failed or superseded")
        if not isinstance(body.get("lease_id"), str) or not isinstance(body.get("generation"), int):
            return self.error(400, "bad_request", "lease_id and generation are required")
        with st.lock:
            rec = self.find_job(agent, job_id)
            if rec is None:
                return
            entry = {"job": job_id, "body": body, "time_ms": now_ms()}
            st.acks.append(entry)
            if rec["result"] is not None and rec["state"] == "acked":
                if rec["result"] == result:
                    entry["status"] = 200
                    return self.send(200, {})
                entry["status"] = 409
                return self.error(409, "conflict", f"job {job_id} was acknowledged {rec['result']}")
            if rec["state"] == "failed":
                entry["status"] = 409
                return self.error(409, "conflict", f"job {job_id} failed: {rec.get('reason')}")
            rec["state"] = "acked"
            rec["result"] = result
            rec["ack"] = body
            entry["status"] = 200
            st.lock.notify_all()
        self.send(200, {})

    def put_inventory(self, agent, body):
        st = self.server.state
        if not isinstance(body.get("containers"), list):
            return self.error(400, "bad_request", "containers: array")
        with st.lock:
            inv = st.inventory.setdefault(agent["id"], {"puts": 0})
            inv["puts"] += 1
            inv["containers"] = body["containers"]
            inv["time_ms"] = now_ms()
        self.send(200, {})

    def post_logs(self, agent, body):
        """Embedded mode: one batch per stream, the CloudWatch rules; broken ones are
        refused whole (400) and nothing of them is kept."""
        streams = body.get("streams") if isinstance(body, dict) else None
        if not isinstance(streams, list) or not streams:
            return self.error(400, "bad_request", "streams: a non-empty array")
        for i, s in enumerate(streams):
            where = f"streams[{i}]"
            if not isinstance(s, dict) or not all(isinstance(s.get(k), str) and s.get(k)
                                                  for k in ("app", "service", "container")):
                return self.error(400, "bad_request", f"{where}: app, service, container")
            if s.get("release") is not None and not isinstance(s["release"], str):
                return self.error(400, "bad_request", f"{where}.release: string or null")
            events = s.get("events")
            if not isinstance(events, list) or not events or len(events) > BATCH_EVENTS:
                return self.error(400, "bad_request", f"{where}.events: 1 to {BATCH_EVENTS}")
            size, last = 0, None
            for k, e in enumerate(events):
                if not isinstance(e, dict) or not isinstance(e.get("ts_ms"), int) or \
                        not isinstance(e.get("message"), str) or not e["message"] or \
                        e.get("stream", "stdout") not in ("stdout", "stderr"):
                    return self.error(400, "bad_request", f"{where}.events[{k}]: malformed")
                if last is not None and e["ts_ms"] < last:
                    return self.error(400, "bad_request", f"{where}.events[{k}]: out of order")
                last = e["ts_ms"]
                size += len(e["message"].encode()) + EVENT_OVERHEAD
            if size > BATCH_BYTES:
                return self.error(400, "bad_request", f"{where}: over {BATCH_BYTES} bytes")
        st = self.server.state
        accepted = 0
        with st.lock:
            rec = st.logs.setdefault(agent["id"], {"posts": 0, "events": 0, "rejected": 0,
                                                   "streams": {},
                                                   "last": collections.deque(maxlen=LOGS_KEPT)})
            rec["posts"] += 1
            for s in streams:
                key = f"{s['app']}/{s['service']}/{s['container']}"
                rec["streams"][key] = rec["streams"].get(key, 0) + len(s["events"])
                for e in s["events"]:
                    rec["last"].append(dict(e, app=s["app"], service=s["service"],
                                            container=s["container"],
                                            release=s.get("release")))
                accepted += len(s["events"])
            rec["events"] += accepted
        self.send(200, {"accepted": accepted, "rejected": 0})

    def post_metrics(self, agent, body):
        metrics = body.get("metrics") if isinstance(body, dict) else None
        if not isinstance(metrics, list) or len(metrics) > METRICS_MAX:
            return self.error(400, "bad_request", f"metrics: an array of at most {METRICS_MAX}")
        for i, m in enumerate(metrics):
            if not isinstance(m, dict) or not isinstance(m.get("name"), str) or \
                    isinstance(m.get("value"), bool) or \
                    not isinstance(m.get("value"), (int, float)) or \
                    not all(isinstance(v, str) for v in (m.get("dimensions") or {}).values()):
                return self.error(400, "bad_request", f"metrics[{i}]: name, numeric value, "
                                  "string dimensions")
        st = self.server.state
        with st.lock:
            rec = st.metrics.setdefault(agent["id"], {"posts": 0, "metrics": []})
            rec["posts"] += 1
            rec["metrics"] = metrics
            rec["time_ms"] = now_ms()
        self.send(200, {"accepted": len(metrics)})

    def get_desired(self, agent):
        st = self.server.state
        with st.lock:
            apps = [{"app": a, "generation": d["generation"],
                     "release": (d["release"] or {}).get("id")}
                    for a, d in st.desired.items()]
        self.send(200, {"apps": apps})

    # -- control API --
    def control(self, method, parts, url):
        st = self.server.state
        # Tests may queue jobs larger than the protocol allows (a 1 MB environment).
        body = self.body(64 << 20) if method == "POST" else {}
        if body is None:
            return
        with st.lock:
            if method == "GET" and parts == ["agents"]:
                return self.send(200, {"agents": list(st.agents.values())})
            if method == "GET" and parts == ["jobs"]:
                st.expire_leases()
                jobs = [{k: v for k, v in st.jobs[j].items() if k != "body"} for j in st.order]
                return self.send(200, {"jobs": jobs})
            if method == "GET" and parts == ["acks"]:
                return self.send(200, {"acks": st.acks})
            if method == "GET" and parts == ["inventory"]:
                return self.send(200, {"agents": st.inventory})
            if method == "GET" and parts == ["requests"]:
                return self.send(200, {"requests": st.requests})
            if method == "GET" and parts == ["logs"]:
                return self.send(200, {"agents": {a: dict(r, last=list(r["last"]))
                                                  for a, r in st.logs.items()}})
            if method == "GET" and parts == ["metrics"]:
                return self.send(200, {"agents": st.metrics})
            if method == "POST" and parts == ["desired"]:
                app = body["app"]
                st.desired[app] = {"generation": body["generation"],
                                   "release": body.get("release"),
                                   "type": body.get("type", "deploy")}
                ids = []
                if body.get("enqueue", True):
                    ids = [st.enqueue_desired(a, app) for a in st.agents]
                return self.send(200, {"jobs": ids})
            if method == "POST" and parts == ["jobs"]:
                agent = body.get("agent") or next(iter(st.agents), None)
                if agent not in st.agents:
                    return self.error(404, "not_found", "no such agent")
                jid = st.enqueue(agent, body["job"], body.get("omit", ()))
                return self.send(200, {"id": jid})
            if method == "POST" and parts == ["fault"]:
                if body["kind"] == "down":
                    st.down_until = time.time() + float(body.get("seconds", 1))
                else:
                    st.faults.append({"kind": body["kind"], "count": int(body.get("count", 1)),
                                      "path": body.get("path")})
                return self.send(200, {})
            if method == "POST" and parts == ["expire"]:
                rec = st.jobs.get(body["job"])
                if rec and rec["state"] == "leased":
                    rec["expires"] = 0
                    st.expire_leases()
                return self.send(200, {})
        return self.error(404, "not_found", "no such control path")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that went away (an agent killed mid-poll) is not an error here.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def expirer(state):
    while True:
        time.sleep(0.1)
        with state.lock:
            state.expire_leases()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap-token", default="test-bootstrap-token")
    p.add_argument("--lease-s", type=int, default=5)
    p.add_argument("--heartbeat-s", type=int, default=2)
    p.add_argument("--lost-after-s", type=int, default=10)
    p.add_argument("--max-wait-s", type=int, default=30)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    srv.state = State(args)
    threading.Thread(target=expirer, args=(srv.state,), daemon=True).start()
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
