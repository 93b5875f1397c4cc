#!/usr/bin/env python3
"""The agent against an unreliable coordinator (the fake's fault injection):
identity reuse across restarts, re-registration after a 401, 500s on acks,
dropped polls, the coordinator unreachable for seconds, a lease lost on
extend (the redelivered job is recognised, not run twice), and leases
extended through a slow health check. The proxy keeps serving throughout.
"""
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(16)
env = L.Env("coord")


def release(n, port, extra_env=None, grace_ms=20000):
    e = {"RELEASE": f"r{n}"}
    e.update(extra_env or {})
    health = {"type": "http", "path": "/health", "interval_ms": 100, "timeout_ms": 1000,
              "grace_ms": grace_ms}
    return L.release(f"r{n}", "web", [L.service(image=L.IMAGE_V1, env=e, listen=port, count=1,
                                                 health=health)])


def jobs_for(jid):
    return [c for c in env.mine() if c["Labels"].get("slipway.job") == jid]


try:
    coord = env.coordinator(lease_s=3, heartbeat_s=1)
    agent = env.agent(coord).start()
    agent.wait_registered()
    port = L.free_port()
    j = coord.desired("web", 1, release(1, port))[0]
    res = coord.wait_result(j, 60)
    t.check("r1 deployed", res and res["result"] == "succeeded", json.dumps(res))
    poller = L.Poller(port, pause=0.005)
    poller.start()

    # ---- identity survives a restart ----
    agent.kill()
    agent.start()
    time.sleep(2.5)
    ag = coord.agents()[0]
    t.check("a restarted agent reuses its identity (no second registration)",
            ag["registrations"] == 1 and ag["heartbeats"] > 0, json.dumps(ag))

    # ---- token rotated elsewhere: 401, register again ----
    body = json.dumps({"instance_id": ag["instance_id"], "hostname": "x", "fleet": "default",
                       "version": "0", "arch": "x86_64", "protocol": 1,
                       "capabilities": ["deploy"]}).encode()
    req = urllib.request.Request(coord.url + "/v1/agents/register", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + coord.token,
                                          "Slipway-Protocol": "1",
                                          "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
    ok = L.wait_for(lambda: coord.agents()[0]["registrations"] >= 3, 10)
    t.check("after its token was rotated the agent registers again", ok,
            json.dumps(coord.agents()))
    j = coord.desired("web", 2, release(2, port))[0]
    res = coord.wait_result(j, 60)
    t.check("... and keeps working (r2 deployed)", res and res["result"] == "succeeded",
            json.dumps(res))

    # ---- 500s on the ack ----
    coord.fault("500", count=4, path="/ack")
    j = coord.desired("web", 3, release(3, port))[0]
    res = coord.wait_result(j, 60)
    acks = coord.acks(j)
    t.check("ack answered 500 four times is retried until accepted",
            res and res["result"] == "succeeded" and acks and acks[-1]["status"] == 200 and
            coord.requests().get("ack", 0) >= 5, json.dumps([acks, coord.requests()]))

    # ---- dropped connections on the poll ----
    coord.fault("drop", count=3, path="/jobs")
    time.sleep(0.5)
    j = coord.desired("web", 4, release(4, port))[0]
    res = coord.wait_result(j, 60)
    t.check("polls whose connections drop are retried; the job arrives",
            res and res["result"] == "succeeded", json.dumps(res))

    # ---- unreachable for 6 s ----
    coord.fault("down", seconds=6)
    time.sleep(0.5)
    j = coord.desired("web", 5, release(5, port))[0]
    res = coord.wait_result(j, 60)
    t.check("coordinator unreachable for 6 s: the job is done once it answers again",
            res and res["result"] == "succeeded", json.dumps(res))
    log = agent.log_text()
    n = log.count("coord.unreachable request=poll")
    t.check("the outage is logged, not every retry", 1 <= n <= 2 and
            "coord.reachable request=poll" in log, f"{n} coord.unreachable poll lines")

    # ---- a lease lost on extend: the redelivered copy is recognised ----
    coord.fault("410_extend", count=1)
    j = coord.desired("web", 6, release(6, port, {"HEALTH_DELAY_MS": "4000"}))[0]
    res = coord.wait_result(j, 60)
    t.check("lease lost on extend: the job still ends succeeded",
            res and res["result"] == "succeeded", json.dumps(res))
    t.check("... delivered again (attempt 2) and acknowledged with the new lease",
            res and res["attempt"] >= 2 and res["ack"]["lease_id"] == res["lease_id"],
            json.dumps(res))
    t.check("... but run once: one container for the job",
            len(jobs_for(j)) == 1 and "deployer.redelivered job=" + j in agent.log_text(),
            json.dumps([c["Names"] for c in jobs_for(j)]))

    # ---- a slow health check: the lease is extended, never lost ----
    j = coord.desired("web", 7, release(7, port, {"HEALTH_DELAY_MS": "7000"}))[0]
    res = coord.wait_result(j, 60)
    t.check("a 7 s health check under a 3 s lease: succeeded in one attempt",
            res and res["result"] == "succeeded" and res["attempt"] == 1, json.dumps(res))
    t.check("... thanks to lease extensions every lease/3", res and res.get("extends", 0) >= 5,
            json.dumps(res))
    poller.stop()
    t.check("the proxy kept serving through all of it (no failed request)",
            not poller.failures and poller.total > 100,
            json.dumps({"failures": poller.failures[:5], "total": poller.total}))
    t.check("the agent logged no error", " error " not in agent.log_text(),
            "\n".join(x for x in agent.log_text().splitlines() if " error " in x)[:2000])
    t.check("the agent never logged its token",
            all(tok not in agent.log_text() for tok in (coord.token,)), "token in log")
finally:
    env.close()
sys.exit(t.done())
