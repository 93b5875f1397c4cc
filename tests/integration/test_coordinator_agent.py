#!/usr/bin/env python3
"""The round trip through the REAL coordinator and the REAL agent (Docker,
the proxy, the harness's testsrv images): releases promoted through the API
end up serving through the agent's proxy with no failed request; a release
that never becomes healthy is rolled back while the old one keeps serving;
a rollback through the API is a new release that serves the old version;
ps shows what the agent reported. (The build part, a push becoming that
release, is the builder's test.)"""
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from coord_proc import BOOT, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(12)
env = L.Env("coordagent")


class CoordForAgent:
    """What agentlib.Agent needs of a coordinator: url, token, agents()."""

    def __init__(self, co):
        self.co = co
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = BOOT

    def agents(self):
        st, b, _ = self.co.call("GET", "/v1/agents", token=self.co.admin_key)
        return b["agents"] if st == 200 else []


def get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def svc(image, rel, listen, extra_env=None):
    e = {"RELEASE": rel}
    e.update(extra_env or {})
    return {"web": {"image": image, "port": 8080, "environment": e,
                    "proxy": {"listen": listen, "hosts": [], "protocol": "http"},
                    "health": {"type": "http", "path": "/health", "interval_ms": 100,
                               "timeout_ms": 1000, "grace_ms": 8000},
                    "count": 1, "stop_grace_ms": 2000}}


def rollout_end(co, rid, timeout=90):
    def ended():
        st, b, _ = co.call("GET", f"/v1/apps/web/rollouts/{rid}", token=co.admin_key)
        return b if st == 200 and b["state"] != "running" else None
    return L.wait_for(ended, timeout, 0.2) or {}


try:
    with Coordinator(extra={"queue.lease": "30s"}) as co:
        key = co.admin_key
        agent = env.agent(CoordForAgent(co), instance="rt").start()
        t.check("the real agent registers with the real coordinator",
                agent.wait_registered(30), L.wait_for(lambda: None, 0) or agent.log_text()[-2000:])
        listen = L.free_port()
        st, b, _ = co.call("POST", "/v1/apps", token=key, body={"name": "web"})
        st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V1, "r1", listen), "description": "v1"})
        r1 = b.get("release")
        ro = rollout_end(co, b.get("rollout"))
        t.check("the first release's rollout succeeds on the agent", ro.get("state") == "succeeded",
                (ro, agent.log_text()[-3000:]))
        t.check("it serves through the agent's proxy", "hello from r1" in get(listen), get(listen))

        poller = L.Poller(listen)
        poller.start()
        time.sleep(0.5)
        st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r2", listen), "description": "v2"})
        ro = rollout_end(co, b.get("rollout"))
        t.check("a second release rolls out", ro.get("state") == "succeeded", ro)
        t.check("and serves", L.wait_for(lambda: "hello from r2" in get(listen), 10), get(listen))

        st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r3", listen, {"HEALTH_FAIL": "1"}),
            "description": "never healthy"})
        r3 = b.get("release")
        ro = rollout_end(co, b.get("rollout"))
        t.check("a release that never becomes healthy is rolled back",
                ro.get("state") == "rolled back" and ro["jobs"][0]["result"] == "failed", ro)
        t.check("the agent's failure reason reaches the rollout", bool(ro.get("reason")), ro)
        st, rel, _ = co.call("GET", f"/v1/apps/web/releases/{r3}", token=key)
        t.check("that release is marked failed and r2 keeps serving",
                rel.get("status") == "failed" and "hello from r2" in get(listen), (rel, get(listen)))

        st, b, _ = co.call("POST", f"/v1/apps/web/releases/{r1}/rollback", token=key)
        ro = rollout_end(co, b.get("rollout"))
        t.check("a rollback to r1 is a new release that rolls out",
                st == 202 and b.get("release") != r1 and ro.get("state") == "succeeded", (b, ro))
        t.check("and serves r1 again", L.wait_for(lambda: "hello from r1" in get(listen), 10),
                get(listen))
        poller.stop()
        t.check(f"no request failed through all of it ({poller.total} requests)",
                poller.total > 0 and not poller.failures, poller.failures[:5])

        def reported():
            st, b, _ = co.call("GET", "/v1/ps?app=web", token=key)
            cs = [c for c in b.get("containers", []) if c.get("state") == "running"]
            return cs if cs and cs[0].get("agent") else None
        cs = L.wait_for(reported, 20, 0.5)
        t.check("ps shows the agent's running container", bool(cs), cs)
finally:
    env.close()
sys.exit(t.done())
