#!/usr/bin/env python3
"""The SQS queue backend end to end: the REAL coordinator with queue.backend =
sqs against tests/fakes/sqs.py (real wire format, SigV4 checked), REAL agents
on the real Docker engine. Each agent gets its own queue at registration
(tagged with its instance id and fleet, named in the registration answer);
releases reach every agent through SQS (SendMessageBatch, ReceiveMessage,
ChangeMessageVisibility during a long swap, DeleteMessage after the ack) and
nobody long-polls the coordinator; throttling, 500s and dropped connections
injected in the fake still end with every agent converged; an agent removed
through the API loses its queue; a lost agent's queue is deleted after the
grace and made anew when it comes back; an orphaned queue under the prefix
is swept."""
import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from coord_proc import BOOT, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(21)
env = L.Env("sqsq")

AKID = "AKIDSQSBACKENDIT"
SECRET = "secret-of-the-sqs-backend-integration-test"
REGION = "us-east-1"
PREFIX = f"sw{env.run}-"
NET_B = env.network + "b"

# Both daemons take their AWS keys from the environment (aws_credentials).
os.environ.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET,
                   "AWS_EC2_METADATA_DISABLED": "true",
                   "AWS_SHARED_CREDENTIALS_FILE": os.path.join(env.tmp, "no-such-file")})
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)


class FakeSQS:
    def __init__(self):
        script = os.path.join(L.TOP, "tests", "fakes", "sqs.py")
        self.log = open(os.path.join(env.tmp, "fake-sqs.log"), "w")
        self.proc = subprocess.Popen(["python3", script, "--access-key", AKID, "--secret-key",
                                      SECRET, "--region", REGION, "--deleted-recently-s", "1"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def ctl(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read() or b"null")

    def queues(self):
        return [q for q in self.ctl("GET", "/_fake/queues")["queues"]
                if q["name"].startswith(PREFIX)]

    def stats(self):
        return self.ctl("GET", "/_fake/stats")

    def fault(self, **f):
        return self.ctl("POST", "/_fake/fault", f)

    def signed(self, action, doc):
        """A SigV4-signed call, as an operator's tool would make it."""
        body = json.dumps(doc).encode()
        now = datetime.datetime.now(datetime.timezone.utc)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = f"127.0.0.1:{self.port}"
        headers = {"content-type": "application/x-amz-json-1.0", "host": host,
                   "x-amz-date": amz, "x-amz-target": "AmazonSQS." + action}
        names = sorted(headers)
        creq = "\n".join(["POST", "/", "", "".join(f"{n}:{headers[n]}\n" for n in names),
                          ";".join(names), hashlib.sha256(body).hexdigest()])
        scope = f"{day}/{REGION}/sqs/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + SECRET).encode()
        for part in (day, REGION, "sqs", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AKID}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={sig}")
        del headers["host"]
        req = urllib.request.Request(self.url + "/", data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read() or b"null")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class CoordForAgent:
    def __init__(self, co):
        self.co = co
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = BOOT

    def agents(self):
        st, b, _ = self.co.call("GET", "/v1/agents", token=self.co.admin_key)
        return b["agents"] if st == 200 else []


def get(port, host="127.0.0.1"):
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def svc(image, rel, listen, extra_env=None):
    e = {"RELEASE": rel}
    e.update(extra_env or {})
    return {"web": {"image": image, "port": 8080, "environment": e,
                    "proxy": {"listen": listen, "hosts": [], "protocol": "http"},
                    "health": {"type": "http", "path": "/health", "interval_ms": 100,
                               "timeout_ms": 1000, "grace_ms": 15000},
                    "count": 1, "stop_grace_ms": 2000}}


def rollout_end(co, rid, timeout=120):
    def ended():
        st, b, _ = co.call("GET", f"/v1/apps/web/rollouts/{rid}", token=co.admin_key)
        return b if st == 200 and b["state"] != "running" else None
    return L.wait_for(ended, timeout, 0.2) or {}


def serves(listen, rel, hosts=("127.0.0.1", "127.0.0.2")):
    return all(f"hello from {rel}" in get(listen, h) for h in hosts)


def identity(agent):
    try:
        with open(os.path.join(agent.state_dir, "identity.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def queue_of(sqs, instance):
    for q in sqs.queues():
        if q["tags"].get("slipway:instance-id") == instance:
            return q
    return None


sqs = FakeSQS()
try:
    with Coordinator(extra={"queue.backend": "sqs", "queue.sqs_region": REGION,
                            "queue.sqs_endpoint": sqs.url, "queue.sqs_prefix": PREFIX,
                            "queue.sqs_sweep_interval": "2s", "queue.sqs_lost_grace": "4s",
                            "queue.lease": "6s", "agents.lost_after": "4s",
                            "agents.heartbeat_interval": "1s"}) as co:
        key = co.admin_key
        cfa = CoordForAgent(co)
        # Two agents on one Docker engine, as if on two instances: each manages
        # only its own containers (an extra label), on its own network, with
        # its proxy on its own loopback address.
        a = env.agent(cfa, instance="sqa", extra={
            "deploy.labels": f"{L.LABEL},slipway.sqs-it=a"}).start()
        b = env.agent(cfa, instance="sqb", extra={
            "deploy.labels": f"{L.LABEL},slipway.sqs-it=b", "docker.network": NET_B,
            "proxy.bind": "127.0.0.2", "deploy.name_prefix": f"sw{env.run}b"}).start()
        ia, ib = f"sqa-{env.run}", f"sqb-{env.run}"
        both = L.wait_for(lambda: len([x for x in cfa.agents()
                                       if x["instance_id"] in (ia, ib)]) == 2, 30, 0.1)
        t.check("two real agents register with the coordinator on the SQS backend", both,
                (a.log_text()[-1500:], co.log_tail()))

        qa, qb = L.wait_for(lambda: queue_of(sqs, ia), 10), L.wait_for(lambda: queue_of(sqs, ib), 10)
        t.check("each has its own queue, named from the prefix and tagged with instance and fleet",
                qa and qb and qa["name"] == PREFIX + ia and qb["name"] == PREFIX + ib
                and qa["tags"].get("slipway:fleet") == "default"
                and qa["attributes"].get("VisibilityTimeout") == "6", sqs.queues())
        ida = L.wait_for(lambda: identity(a).get("queue_url") and identity(a), 10) or {}
        t.check("the registration answer named the queue (kept in the agent's identity)",
                qa and ida.get("queue_url") == qa["url"] and ida.get("queue_region") == REGION,
                (ida, qa))

        listen = L.free_port()
        co.call("POST", "/v1/apps", token=key, body={"name": "web"})
        st, rb, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V1, "r1", listen), "description": "v1"})
        ro = rollout_end(co, rb.get("rollout"))
        t.check("a release rolls out to both agents through SQS",
                ro.get("state") == "succeeded" and len(ro.get("jobs", [])) == 2,
                (ro, a.log_text()[-2000:], b.log_text()[-2000:]))
        t.check("and both serve it", L.wait_for(lambda: serves(listen, "r1"), 10),
                (get(listen), get(listen, "127.0.0.2")))

        def counts():
            req = sqs.stats().get("requests", {})
            return {k: req.get(k, 0) for k in ("SendMessageBatch", "ReceiveMessage",
                                               "DeleteMessage", "ChangeMessageVisibility")}
        c1 = counts()
        left = L.wait_for(lambda: all(q["messages"] == 0 for q in sqs.queues()), 15, 0.2)
        st, h, _ = co.call("GET", "/v1/health")
        t.check("jobs were sent, received and deleted after the ack; nothing polls the "
                "coordinator", c1["SendMessageBatch"] >= 2 and c1["ReceiveMessage"] >= 2
                and c1["DeleteMessage"] >= 2 and left and h.get("polls") == 0,
                (c1, sqs.queues(), h))

        # A swap longer than the lease: the agent extends the message's visibility.
        st, rb, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r2", listen, {"HEALTH_DELAY_MS": "7000"}),
            "description": "slow to become healthy"})
        ro = rollout_end(co, rb.get("rollout"))
        c2 = counts()
        t.check("a swap longer than the visibility timeout succeeds on both",
                ro.get("state") == "succeeded" and L.wait_for(lambda: serves(listen, "r2"), 10),
                (ro, a.log_text()[-2000:]))
        t.check("its message's visibility was extended (ChangeMessageVisibility) and it was "
                "not received twice", c2["ChangeMessageVisibility"] > c1["ChangeMessageVisibility"]
                and all(j.get("attempt", 1) == 1 for j in ro.get("jobs", [])), (c2, ro))

        # Faults in the service: throttling, 500s, dropped connections, failed entries.
        faults = [dict(kind="throttle", count=3, target="SendMessageBatch"),
                  dict(kind="error500", count=2, target="SendMessageBatch"),
                  dict(kind="drop", count=1, target="SendMessageBatch"),
                  dict(kind="entry_fail", count=1, target="SendMessageBatch"),
                  dict(kind="drop", count=2, target="ReceiveMessage"),
                  dict(kind="error503", count=2, target="ReceiveMessage"),
                  dict(kind="error500", count=1, target="DeleteMessage")]
        for f in faults:
            sqs.fault(**f)
        st, rb, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V1, "r3", listen), "description": "through faults"})
        ro = rollout_end(co, rb.get("rollout"))
        t.check("through throttling, 5xx and dropped connections every agent converges",
                ro.get("state") == "succeeded" and L.wait_for(lambda: serves(listen, "r3"), 15),
                (ro, sqs.stats().get("errors"), co.log_tail()))
        hit = L.wait_for(lambda: all(sqs.stats().get("errors", {}).get("fault:" + k, 0) >= n
                                     for k, n in (("throttle", 3), ("error500", 2),
                                                  ("drop", 1), ("entry_fail", 1),
                                                  ("error503", 1))), 40, 0.5)
        t.check("the injected faults were all met", hit, sqs.stats().get("errors"))
        t.check("and no message is left behind",
                L.wait_for(lambda: all(q["messages"] == 0 for q in sqs.queues()), 40, 0.5),
                sqs.queues())

        # The coordinator dies and comes back: the queues are in its store.
        creates = sqs.stats()["requests"].get("CreateQueue", 0)
        co.kill(signal.SIGKILL)
        co.restart()
        st, rb, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r3b", listen), "description": "after a restart"})
        ro = rollout_end(co, rb.get("rollout"))
        t.check("after the coordinator is killed and restarted, releases still reach both "
                "agents through their queues",
                ro.get("state") == "succeeded" and L.wait_for(lambda: serves(listen, "r3b"), 15),
                (ro, co.log_tail()))
        t.check("with the queues it remembered (no agent had to register again)",
                sqs.stats()["requests"].get("CreateQueue", 0) == creates,
                (creates, sqs.stats()["requests"]))

        # An agent that leaves (removed through the API) loses its queue.
        aid = next(x["id"] for x in cfa.agents() if x["instance_id"] == ia)
        a.kill()
        st, _, _ = co.call("DELETE", f"/v1/agents/{aid}", token=key)
        t.check("a removed agent's queue is deleted",
                st == 200 and L.wait_for(lambda: queue_of(sqs, ia) is None, 10), sqs.queues())

        # An orphan: a queue under the prefix that no agent owns.
        sqs.signed("CreateQueue", {"QueueName": PREFIX + "orphan-i-0dead"})
        made = any(q["name"] == PREFIX + "orphan-i-0dead" for q in sqs.queues())
        t.check("an orphaned queue under the prefix is swept", made and L.wait_for(
            lambda: not any(q["name"] == PREFIX + "orphan-i-0dead" for q in sqs.queues()), 15),
            sqs.queues())

        # Lost for good: the queue goes after queue.sqs_lost_grace.
        old_url = queue_of(sqs, ib)["url"]
        b.kill()
        gone = L.wait_for(lambda: queue_of(sqs, ib) is None, 40, 0.5)
        st, ags, _ = co.call("GET", "/v1/agents", token=key)
        t.check("a lost agent's queue is deleted after the grace", gone, sqs.queues())
        t.check("the coordinator forgot nothing else about it",
                any(x["instance_id"] == ib and x["state"] == "lost" for x in ags["agents"]), ags)

        # It comes back: its queue is gone, so it registers again and gets a new one.
        b.start()
        back = L.wait_for(lambda: queue_of(sqs, ib), 30, 0.3)
        t.check("an agent whose queue vanished registers again and gets its queue back",
                bool(back) and back["url"] == old_url and "sqs.queue_gone" in b.log_text(),
                (sqs.queues(), b.log_text()[-2000:]))
        st, rb, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r4", listen), "description": "after the return"})
        ro = rollout_end(co, rb.get("rollout"))
        t.check("and releases reach it through the new queue",
                ro.get("state") == "succeeded" and
                L.wait_for(lambda: serves(listen, "r4", ("127.0.0.2",)), 15),
                (ro, b.log_text()[-2000:]))
        sig = sqs.stats()
        t.check("every request the fake saw was signed correctly",
                sig.get("errors", {}).get("SignatureDoesNotMatch", 0) == 0
                and sig.get("errors", {}).get("IncompleteSignature", 0) == 0, sig)
        b.stop()
        t.check("the agent stops cleanly", b.wait_exit(15) is not None and b.proc.returncode == 0,
                b.log_text()[-1000:])
finally:
    env.close()
    L.docker("DELETE", f"/networks/{NET_B}")
    sqs.close()
sys.exit(t.done())
