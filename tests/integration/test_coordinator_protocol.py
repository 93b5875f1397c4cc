#!/usr/bin/env python3
"""Protocol conformance of the real slipway-coordinator (docs/protocol.md),
driven by a Python client: registration and its errors, token rotation,
heartbeat, polls (empty, waking, one per agent), leases (expiry, extension,
redelivery, max attempts), acks (idempotent, 409, late), inventory, desired
state, logs, loss and return, body caps, the error body and headers."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from coord_proc import BOOT, Agent, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

t = Tap()


def is_error(body, code):
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and body["error"].get("code") == code
            and isinstance(body["error"].get("message"), str) and body["error"]["message"])


def release(co, image, promote=True):
    st, b, _ = co.call("POST", "/v1/apps/web/releases", token=co.admin_key, body={
        "services": {"web": {"image": image, "port": 8080,
                             "health": {"type": "http", "path": "/health"},
                             "proxy": {"listen": 80, "hosts": ["web.example.com"]}}},
        "promote": promote})
    assert st in (201, 202), (st, b)
    return b


def idle(agent, seconds):
    """Waits while heartbeating, so the agent stays live (lost_after is 3 s here)."""
    end = time.time() + seconds
    while time.time() < end:
        agent.call("POST", "heartbeat", body={})
        time.sleep(min(0.5, max(0, end - time.time())))


SPEC_FIELDS = {"name", "image", "command", "environment", "port", "proxy", "health", "count",
               "memory_mb", "stop_grace_ms"}

with Coordinator(extra={"queue.lease": "2s", "queue.max_attempts": "3",
                        "agents.lost_after": "3s", "agents.heartbeat_interval": "1s"}) as co:
    key = co.admin_key

    # --- registration ---
    st, b, h = co.call("POST", "/v1/agents/register", token="nope", body={"instance_id": "i-1"})
    t.check("register with a wrong bootstrap token: 401 unauthorized",
            st == 401 and is_error(b, "unauthorized"), (st, b))
    t.check("every answer carries Slipway-Protocol: 1 and a request id",
            h.get("slipway-protocol") == "1" and h.get("slipway-request-id", "").startswith("rq_"),
            h)
    st, b, _ = co.call("POST", "/v1/agents/register", token=BOOT, body={"hostname": "x"})
    t.check("register without instance_id: 400 bad_request", st == 400 and is_error(b, "bad_request"),
            (st, b))
    st, b, _ = co.call("POST", "/v1/agents/register", token=BOOT,
                       body={"instance_id": "i-1", "protocol": 2})
    t.check("register with protocol 2: 400 protocol_unsupported",
            st == 400 and is_error(b, "protocol_unsupported"), (st, b))
    a = Agent(co, "i-0a1b2c3d4e5f")
    st, b = a.register()
    t.check("register: 200 with agent_id, a 96-hex token and the intervals",
            st == 200 and b["agent_id"].startswith("ag_") and len(b["token"]) == 96
            and b["heartbeat_interval_s"] == 1 and b["lost_after_s"] == 3 and b["lease_s"] == 2
            and b["poll_wait_s"] == 30, (st, b))
    old_token = a.token
    st, b = a.register()
    t.check("registering again keeps the agent id and issues a new token",
            st == 200 and b["agent_id"] == a.id and b["token"] != old_token, b)
    st, b, _ = co.call("POST", f"/v1/agents/{a.id}/heartbeat", token=old_token, body={})
    t.check("the old token is refused: 401", st == 401 and is_error(b, "unauthorized"), (st, b))
    st, b, _ = co.call("POST", "/v1/agents/ag_nobody/heartbeat", token=a.token, body={})
    t.check("unknown agent: 404 not_found", st == 404 and is_error(b, "not_found"), (st, b))
    st, b, _ = a.call("POST", "heartbeat", body={}, headers={"Slipway-Protocol": "2"})
    t.check("Slipway-Protocol: 2 is refused with protocol_unsupported",
            st == 400 and is_error(b, "protocol_unsupported"), (st, b))

    # --- heartbeat ---
    st, b, _ = a.call("POST", "heartbeat", body={"uptime_s": 3600, "draining": False, "apps": []})
    t.check("heartbeat: 200 with server_time_ms",
            st == 200 and abs(b["server_time_ms"] / 1000 - time.time()) < 5, (st, b))
    st, b, _ = a.call("POST", "heartbeat", body={"uptime_s": "long"})
    t.check("heartbeat with a wrong type: 400", st == 400 and is_error(b, "bad_request"), (st, b))

    # --- empty poll ---
    t0 = time.time()
    st, b, _ = a.poll(wait=1)
    el = time.time() - t0
    t.check("a poll with nothing queued answers {\"jobs\": []} after wait",
            st == 200 and b == {"jobs": []} and 0.9 <= el < 3, (st, b, el))
    st, b, _ = a.poll(wait=-1)
    t.check("wait=-1: 400", st == 400, (st, b))

    # --- a release reaches a waiting poll at once ---
    st, b, _ = co.call("POST", "/v1/apps", token=key, body={"name": "web"})
    assert st == 201, (st, b)
    result = {}

    def waiter():
        result["t0"] = time.time()
        result["resp"] = a.poll(wait=20)
        result["t1"] = time.time()

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.5)
    tp = time.time()
    r1 = release(co, "registry.local:5000/web@sha256:" + "ab" * 32)
    th.join(timeout=25)
    st, b, _ = result["resp"]
    jobs = b.get("jobs", []) if st == 200 else []
    t.check("a promoted release wakes the waiting poll within a second",
            st == 200 and len(jobs) == 1 and result["t1"] - tp < 1.0,
            (st, b, result["t1"] - tp))
    job = jobs[0] if jobs else {}
    spec = job.get("release") or {}
    svc = (spec.get("services") or [{}])[0]
    t.check("the job carries id, type deploy, app, generation, lease, attempt 1 and the spec",
            job.get("type") == "deploy" and job.get("app") == "web" and job.get("generation") == 1
            and job.get("lease_id", "").startswith("l_") and job.get("lease_expires_in_s") == 2
            and job.get("attempt") == 1 and spec.get("id") == r1["release"]
            and spec.get("app") == "web" and "created_ms" in spec and "build" in spec, job)
    t.check("the release spec has every service field of protocol v1 and nothing else",
            set(svc) == SPEC_FIELDS and svc["proxy"]["listen"] == 80
            and svc["health"]["type"] == "http", svc)

    # --- lease expiry and redelivery ---
    st, b, _ = a.poll(wait=0)
    t.check("a leased job is invisible to the next poll", st == 200 and b["jobs"] == [], b)
    idle(a, 3.5)  # lease 2 s + the sweep every second
    st, b, _ = a.poll(wait=3)
    j2 = (b.get("jobs") or [{}])[0]
    t.check("an expired lease returns the job with attempt + 1 and a new lease",
            st == 200 and j2.get("id") == job["id"] and j2.get("attempt") == 2
            and j2.get("lease_id") != job["lease_id"], (st, b))

    # --- extend ---
    st, b, _ = a.extend(job["id"], j2["lease_id"], 30)
    t.check("extend with the current lease: 200 lease_expires_in_s",
            st == 200 and b == {"lease_expires_in_s": 30}, (st, b))
    st, b, _ = a.extend(job["id"], job["lease_id"], 30)
    t.check("extend with the expired lease: 410 lease_lost",
            st == 410 and is_error(b, "lease_lost"), (st, b))
    st, b, _ = a.extend("j_nope", j2["lease_id"], 30)
    t.check("extend of an unknown job: 404", st == 404 and is_error(b, "not_found"), (st, b))
    idle(a, 2.5)
    st, b, _ = a.poll(wait=0)
    t.check("the extended lease holds past its first expiry", st == 200 and b["jobs"] == [], b)

    # --- ack ---
    st, b, _ = a.ack(job["id"], job["lease_id"], "succeeded", generation=1, duration_ms=1200)
    t.check("an ack with the expired first lease is accepted (nobody else acked)",
            st == 200 and b.get("result") == "succeeded", (st, b))
    st, b, _ = a.ack(job["id"], j2["lease_id"], "succeeded")
    t.check("the same ack again (redelivered copy): 200", st == 200, (st, b))
    st, b, _ = a.ack(job["id"], j2["lease_id"], "failed")
    t.check("a contradicting ack: 409 conflict", st == 409 and is_error(b, "conflict"), (st, b))
    st, b, _ = a.ack(job["id"], "l_neverissued", "succeeded")
    t.check("an ack with a lease never issued: 409", st == 409, (st, b))
    st, b, _ = a.ack(job["id"], j2["lease_id"], "done")
    t.check("an ack with an unknown result: 400", st == 400, (st, b))
    st, b, _ = a.extend(job["id"], j2["lease_id"])
    t.check("extending an acknowledged job: 409", st == 409, (st, b))
    st, b, _ = co.call("GET", "/v1/apps/web/rollouts", token=key)
    t.check("the rollout succeeded once the only agent acked",
            st == 200 and b["rollouts"][0]["state"] == "succeeded", b)

    # --- inventory, desired ---
    st, b, _ = a.call("PUT", "inventory", body={"containers": [{
        "id": "3f9a1c", "app": "web", "service": "web", "release": r1["release"],
        "generation": 1, "state": "running", "health": "healthy",
        "started_ms": 1795600000000, "command": "/srv/web", "memory_bytes": 41943040}]})
    t.check("inventory: 200 {}", st == 200 and b == {}, (st, b))
    st, b, _ = co.call("GET", "/v1/ps", token=key)
    t.check("ps lists the reported container with its instance",
            st == 200 and b["containers"][0]["id"] == "3f9a1c"
            and b["containers"][0]["instance_id"] == a.instance_id, b)
    st, b, _ = a.call("GET", "desired")
    t.check("desired: every app of the fleet with generation and release",
            st == 200 and b == {"apps": [{"app": "web", "generation": 1,
                                          "release": r1["release"]}]}, (st, b))

    # --- one poll per agent ---
    res = {}

    def first():
        res["first"] = a.poll(wait=20)
        res["t"] = time.time()

    th = threading.Thread(target=first)
    th.start()
    time.sleep(0.5)
    ts = time.time()
    st2, b2, _ = a.poll(wait=1)
    th.join(timeout=25)
    st1, b1, _ = res["first"]
    t.check("a second poll ends the first one with an empty answer",
            st1 == 200 and b1 == {"jobs": []} and res["t"] - ts < 1.0 and st2 == 200,
            (res, st2, b2))

    # --- max attempts ---
    r2 = release(co, "registry.local:5000/web:v2")
    st, b, _ = a.poll(wait=5)
    jobx = b["jobs"][0]
    for i in range(2):
        idle(a, 3.2)
        st, b, _ = a.poll(wait=3)
    t.check("the job came back for its third attempt", b["jobs"] and b["jobs"][0]["attempt"] == 3,
            b)
    idle(a, 3.5)
    st, b, _ = a.poll(wait=0)
    st_r, ro, _ = co.call("GET", "/v1/apps/web/rollouts", token=key)
    failed = [r for r in ro["rollouts"] if r["release"] == r2["release"]]
    t.check("after 3 expired leases the job fails and so does the rollout",
            b["jobs"] == [] and failed and failed[0]["state"] in ("rolled back", "failed")
            and "lease expired 3 times" in (failed[0]["reason"] or ""), (b, ro))
    st, b, _ = a.ack(jobx["id"], jobx["lease_id"], "succeeded")
    t.check("an ack after the last attempt failed: 409", st == 409, (st, b))

    # --- logs ---
    st, b, _ = a.call("POST", "logs", body={"streams": [{
        "app": "web", "service": "web", "container": "3f9a1c", "release": r1["release"],
        "events": [{"ts_ms": 1795600000123, "stream": "stdout", "message": "GET / 200"},
                   {"ts_ms": 1795600000124, "stream": "stderr", "message": "warn"}]},
        {"app": "ghost", "service": "web", "container": "c", "events": [
            {"ts_ms": 1, "message": "x"}]}]})
    t.check("logs: accepted and rejected counted", st == 200 and b == {"accepted": 2,
                                                                        "rejected": 1}, (st, b))
    st, b, _ = a.call("POST", "logs", body={"streams": [{
        "app": "web", "service": "web", "container": "c", "events": [
            {"ts_ms": 2, "message": "b"}, {"ts_ms": 1, "message": "a"}]}]})
    t.check("logs out of order: 400, nothing stored", st == 400, (st, b))
    st, b, _ = co.call("GET", "/v1/apps/web/logs", token=key)
    t.check("slipway logs reads them back", st == 200 and [e["message"] for e in b["events"]]
            == ["GET / 200", "warn"], b)

    # --- body caps ---
    big = b'{"uptime_s": 1, "pad": "' + b"x" * (2 << 20) + b'"}'
    st, b, _ = a.call("POST", "heartbeat", raw=big,
                      headers={"Content-Type": "application/json"})
    t.check("a 2 MiB heartbeat: 413 too_large", st == 413 and is_error(b, "too_large"), (st, b))
    st, b, _ = a.call("POST", "logs", raw=big, headers={"Content-Type": "application/json"})
    t.check("the same on the logs route passes the 4 MiB cap (then 400 for its content)",
            st == 400, (st, b))

    # --- loss and return ---
    b_agent = Agent(co, "i-second")
    b_agent.register()
    time.sleep(4.5)  # lost_after 3 s + the 1 s timer
    st, b, _ = co.call("GET", "/v1/agents", token=key)
    states = {x["id"]: x["state"] for x in b["agents"]}
    t.check("agents silent for lost_after are lost", states.get(b_agent.id) == "lost"
            and states.get(a.id) == "lost", states)
    st, b, _ = b_agent.poll(wait=0)
    time.sleep(0.2)
    st, b, _ = co.call("GET", "/v1/agents", token=key)
    states = {x["id"]: x["state"] for x in b["agents"]}
    t.check("a lost agent that calls again is live", states.get(b_agent.id) == "live", states)

t.plan(t.n)
sys.exit(t.done())
