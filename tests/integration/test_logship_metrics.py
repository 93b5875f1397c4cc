#!/usr/bin/env python3
"""Health data with the real agent: the local Prometheus page (container
health, memory, CPU, restarts, OOM kills; the instance; the agent itself)
and the EMF documents shipped through the log pipeline to the fake
CloudWatch Logs, read back with signed DescribeLogStreams and GetLogEvents
as an SDK would.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
import loglib as G  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(9)
env = L.Env("logmet")
cw = G.FakeCloudWatch()
creds = os.path.join(env.tmp, "credentials")
G.write_credentials(creds)
app = "lm" + env.run
group = G.PREFIX + app
inst = "logs-" + env.run


def prom_value(m, metric, cid):
    for k, v in m.items():
        if k.startswith(metric + "{") and f'container="{cid[:12]}"' in k:
            return v
    return None


try:
    coord = env.coordinator()
    agent, mport = G.cloudwatch_agent(env, coord, cw, creds, extra={
        "metrics.interval": "1s", "metrics.namespace": "SlipwayTest",
        "metrics.dimensions": "App,InstanceId"})
    G.start_agent(agent)
    agent.wait_registered()

    # A healthy container under a little load.
    key, _, value = L.LABEL.partition("=")
    cid = G.container(env, app, "web")
    L.docker("POST", f"/containers/{cid}/stop?t=1")
    L.docker("DELETE", f"/containers/{cid}?force=1")
    body = {"Image": G.BASE_IMAGE, "Labels": {key: value, "slipway.app": app,
                                              "slipway.service": "web"},
            "Healthcheck": {"Test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/health"],
                            "Interval": 300000000, "Timeout": 1000000000, "Retries": 3},
            "HostConfig": {"NetworkMode": env.network}}
    st, doc = L.docker("POST", f"/containers/create?name=sw{env.run}-healthy", body)
    cid = doc["Id"]
    L.docker("POST", f"/containers/{cid}/start")
    G.testsrv(cid, "/log?n=20000&size=200")
    m = L.wait_for(lambda: (lambda x: x if prom_value(x, "slipway_container_healthy", cid) == 1
                            and (prom_value(x, "slipway_container_memory_bytes", cid) or 0) > 0
                            and (prom_value(x, "slipway_container_cpu_seconds_total", cid) or 0)
                            > 0 else None)(G.prom(mport)), 30, 0.5)
    t.check("Prometheus: the container is healthy, with memory and CPU figures", m,
            {k: v for k, v in G.prom(mport).items() if cid[:12] in k})

    # A container whose biggest process the OOM killer kills; the container lives on.
    body = {"Image": G.BASE_IMAGE, "Labels": {key: value, "slipway.app": app,
                                              "slipway.service": "hog"},
            "Cmd": ["sh", "-c", "echo hog start; busybox head -c 64000000 /dev/zero | "
                    "busybox tail -c 64000000 >/dev/null; echo hog after; exec sleep 3600"],
            "HostConfig": {"NetworkMode": env.network, "Memory": 16 * 1024 * 1024,
                           "MemorySwap": 16 * 1024 * 1024}}
    st, doc = L.docker("POST", f"/containers/create?name=sw{env.run}-hog", body)
    hog = doc["Id"]
    L.docker("POST", f"/containers/{hog}/start")
    oom = L.wait_for(lambda: f"metrics.oom container={hog[:12]}" in agent.log_text(), 60, 0.5)
    t.check("OOM kill: noticed (the engine's oom event)", oom, agent.log_text()[-2000:])
    got = L.wait_for(lambda: (lambda x: x if prom_value(x, "slipway_container_oom_kills_total",
                                                         hog) is not None else None)(
        G.prom(mport)), 30, 0.5)
    v = prom_value(got or {}, "slipway_container_oom_kills_total", hog)
    t.check("OOM kill: counted once on the Prometheus page", v == 1,
            {k: v for k, v in G.prom(mport).items() if hog[:12] in k})
    hog_lines = L.wait_for(lambda: (lambda s: s if s and s["count"] >= 2 else None)(
        cw.stream(group, G.stream_name("hog", inst, hog))), 30, 0.5)
    t.check("the OOM-hit container's output before and after is shipped",
            hog_lines, cw.stream(group, G.stream_name("hog", inst, hog)))

    m = G.prom(mport)
    t.check("Prometheus: instance CPU, memory and disk",
            m.get("slipway_instance_memory_total_bytes", 0) > 0 and
            m.get("slipway_instance_memory_used_bytes", 0) > 0 and
            m.get("slipway_instance_disk_total_bytes", 0) > 0,
            {k: v for k, v in m.items() if "instance" in k})
    t.check("Prometheus: the agent's own memory and log counters",
            m.get("slipway_agent_private_memory_bytes", 0) > 0 and
            m.get("slipway_log_events_shipped_total", 0) >= 20000 and
            m.get("slipway_log_destination_up") == 1, {k: v for k, v in m.items()
                                                       if "agent" in k or "log_" in k})

    # EMF documents, read back through the API as an SDK would.
    def emf(group_name):
        st, d = G.aws_call(cw, "DescribeLogStreams", {"logGroupName": group_name,
                                                      "logStreamNamePrefix": "metrics/"})
        if st != 200 or not d.get("logStreams"):
            return None
        name = d["logStreams"][0]["logStreamName"]
        st, ev = G.aws_call(cw, "GetLogEvents", {"logGroupName": group_name,
                                                 "logStreamName": name, "startFromHead": True})
        docs = [json.loads(e["message"]) for e in ev.get("events", [])]
        return (name, docs) if docs else None
    res = L.wait_for(lambda: emf(group), 30, 0.5)
    ok = False
    if res:
        name, docs = res
        cont = [d for d in docs if "ContainerMemoryBytes" in d]
        d = cont[-1] if cont else {}
        cwm = d.get("_aws", {}).get("CloudWatchMetrics", [{}])[0]
        ok = name == f"metrics/{inst}" and cwm.get("Namespace") == "SlipwayTest" and \
            cwm.get("Dimensions") == [["App", "InstanceId"]] and d.get("App") == app and \
            d.get("Service") in ("web", "hog") and d.get("InstanceId") == inst and \
            isinstance(d["_aws"].get("Timestamp"), int) and \
            {"ContainerCpuPercent", "ContainerMemoryBytes", "ContainerRestarts",
             "ContainerOomKills", "ContainerHealthy"} <= {x["Name"] for x in cwm["Metrics"]}
        print(f"# EMF: {json.dumps(d)[:600]}")
    t.check("EMF: app documents in the app's group, stream metrics/<instance>, configured "
            "namespace and dimensions", ok, res and res[1][-1])
    res = L.wait_for(lambda: emf(G.PREFIX + "_agent"), 30, 0.5)
    names = set()
    for d in (res[1] if res else []):
        names |= {x["Name"] for x in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    t.check("EMF: instance and agent documents in the agent group",
            {"InstanceCpuPercent", "InstanceDiskUsedPercent", "AgentPrivateMemoryBytes",
             "LogEventsShipped", "LogQueueLagMs"} <= names, names)
    t.check("the fake verified the signed read-back requests too",
            cw.stats()["requests"].get("GetLogEvents", 0) >= 2 and
            not cw.stats()["errors"].get("InvalidSignatureException"), cw.stats())
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
    cw.close()
sys.exit(t.done())
