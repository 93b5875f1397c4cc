#!/usr/bin/env python3
"""Embedded mode: without CloudWatch the real agent ships container output
and health data to the real coordinator (POST /v1/agents/{id}/logs and
/metrics, docs/protocol.md), which keeps them for `slipway logs`. Read back
through the API (GET /v1/apps/{app}/logs, GET /v1/agents/{agent}/metrics).
The coordinator is stopped for a while in the middle: lines written
meanwhile are spooled by the agent and arrive after it is back.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
import coord_proc  # noqa: E402
import loglib as G  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(7)
env = L.Env("logemb")
app = "le" + env.run


class CoordRef:
    """What agentlib.Agent needs of a coordinator: its URL and bootstrap token."""

    def __init__(self, co):
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = coord_proc.BOOT


def logs(co, key, after=None):
    """Every event of the app, paging forward."""
    out, cursor = [], after
    while True:
        q = f"/v1/apps/{app}/logs?limit=10000" + (f"&after={cursor}" if cursor else "&since=1d")
        st, doc, _ = co.call("GET", q, token=key)
        if st != 200:
            return out
        out += doc.get("events", [])
        if not doc.get("events") or doc.get("next") in (None, cursor):
            return out
        cursor = doc["next"]


def seq_summary(events, container, kind="log"):
    seqs = []
    for e in events:
        if e.get("container") != container[:12] or f"testsrv {kind} seq=" not in e["message"]:
            continue
        seqs.append(int(e["message"].split("seq=")[1].split()[0]))
    return {"count": len(seqs), "distinct": len(set(seqs)), "max": max(seqs) if seqs else 0}


co = coord_proc.Coordinator(extra={"logs.max_per_app": "64M"})
try:
    co.start()
    key = co.apikey()
    st, doc, _ = co.call("POST", "/v1/apps", {"name": app}, token=key)
    assert st == 201, (st, doc)
    mport = L.free_port()
    agent = env.agent(CoordRef(co), instance="emb", extra={
        "logs.flush_interval": "200ms", "logs.retry_base": "50ms", "logs.retry_cap": "1s",
        "metrics.listen": f"127.0.0.1:{mport}", "metrics.interval": "2s"})
    agent.start()
    ident = os.path.join(agent.state_dir, "identity.json")
    t.check("the agent registers with the real coordinator",
            L.wait_for(lambda: os.path.exists(ident), 20, 0.1), agent.log_text()[-2000:])

    cid = G.container(env, app, "web")
    G.testsrv(cid, "/log?n=3000&size=150")
    G.testsrv(cid, "/log?n=20&size=80&stream=stderr")
    evs = L.wait_for(lambda: (lambda e: e if seq_summary(e, cid)["distinct"] >= 3020 else None)(
        logs(co, key)), 60, 0.5) or logs(co, key)
    s = seq_summary(evs, cid)
    t.check("3000 stdout + 20 stderr lines reach the coordinator once each",
            s["distinct"] == 3020 and s["count"] == 3020 and s["max"] == 3020, s)
    mine = [e for e in evs if e.get("container") == cid[:12]]
    err = [e for e in mine if "stream=stderr" in e["message"]]
    t.check("events carry app, service, release, stream and Docker's timestamp order",
            mine and all(e["app"] == app and e["service"] == "web" and e["release"] == "r1"
                         for e in mine) and len(err) == 20 and
            all(e["stream"] == "stderr" for e in err) and
            all(mine[i]["ts_ms"] <= mine[i + 1]["ts_ms"] for i in range(len(mine) - 1)),
            mine[:2])

    # The coordinator goes away; the agent keeps reading and spools.
    co.kill()
    G.testsrv(cid, "/log?n=1000&size=150")
    time.sleep(3)
    spooled = G.prom(mport).get("slipway_log_events_spooled_total", 0)
    co.restart()
    evs = L.wait_for(lambda: (lambda e: e if seq_summary(e, cid)["distinct"] >= 4020 else None)(
        logs(co, key)), 90, 0.5) or logs(co, key)
    s = seq_summary(evs, cid)
    t.check("coordinator down for 3 s: lines written meanwhile arrive after it is back",
            s["distinct"] == 4020 and s["max"] == 4020, s)
    t.check("coordinator down: the agent spooled them", spooled > 0, f"spooled={spooled}")

    st, doc, _ = co.call("GET", "/v1/agents", token=key)
    ag = [a for a in (doc or {}).get("agents", []) if a["instance_id"].endswith(env.run)]

    def agent_metrics():
        if not ag:
            return None
        st, d, _ = co.call("GET", f"/v1/agents/{ag[0]['id']}/metrics", token=key)
        names = {m.get("name") for m in (d or {}).get("metrics", [])} if st == 200 else set()
        return names if "ContainerMemoryBytes" in names else None
    names = L.wait_for(agent_metrics, 30, 0.5)
    t.check("health data reaches the coordinator's /metrics",
            names and {"InstanceCpuPercent", "AgentPrivateMemoryBytes", "LogEventsShipped",
                       "ContainerCpuPercent"} <= names, names)
    t.check("the agent is still running", agent.alive(), agent.log_text()[-2000:])
except Exception as e:  # noqa: BLE001
    import traceback
    traceback.print_exc()
    t.fail("unexpected error", repr(e))
finally:
    for a in env.agents:
        if os.path.exists(a.log_path):
            print("# agent log tail:")
            for line in a.log_text().splitlines()[-10:]:
                print("#   " + line[:300])
    env.close()
    try:
        co.kill()
    finally:
        import subprocess
        subprocess.run(["rm", "-rf", co.tmp])
sys.exit(t.done())
