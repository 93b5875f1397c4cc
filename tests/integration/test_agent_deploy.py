#!/usr/bin/env python3
"""The agent end to end: the real slipway-agent (and the proxy process it
spawns) against the fake coordinator and the real Docker engine.

Deploy v1 and serve it through the proxy; swap to v2 under wrk load with no
failed request; roll back by restarting kept containers; a release that never
becomes healthy and an image that cannot be pulled fail cleanly while v1 keeps
serving; malformed jobs are acknowledged failed and change nothing; a worker
(no port) swaps by health; the inventory reaches the coordinator; remove.
Health data: every swap's outcome and duration on the agent's metrics page,
and (embedded mode: no CloudWatch) container output and metrics posted to
the coordinator.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(42)
env = L.Env("deploy")


def get(port, path="/"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode(), r.getheader("X-Release")


def app_containers(app):
    return [c for c in env.mine() if c["Labels"].get("slipway.app") == app]


def web_release(rid, image, tag, port, count=2, extra_env=None, **kw):
    e = {"RELEASE": tag}
    e.update(extra_env or {})
    return L.release(rid, "web", [L.service(image=image, env=e, listen=port, count=count, **kw)])


try:
    coord = env.coordinator(lease_s=5, heartbeat_s=1)
    agent = env.agent(coord).start()
    reg = agent.wait_registered()
    t.check("agent registers with the bootstrap token", reg, agent.log_text()[-2000:])
    ident = os.path.join(agent.state_dir, "identity.json")
    ok = L.wait_for(lambda: os.path.exists(ident), 5)
    t.check("identity.json is written with mode 0600",
            ok and (os.stat(ident).st_mode & 0o777) == 0o600,
            oct(os.stat(ident).st_mode) if ok else "missing")
    hb = L.wait_for(lambda: [a for a in coord.agents() if a.get("heartbeats", 0) >= 2], 10)
    t.check("heartbeats arrive", hb, json.dumps(coord.agents()))

    port = L.free_port()
    # ---- v1 ----
    j1 = coord.desired("web", 1, web_release("r1", L.IMAGE_V1, "v1", port))[0]
    res = coord.wait_result(j1, 90)
    t.check("deploy v1: acknowledged succeeded", res and res["result"] == "succeeded",
            json.dumps(res))
    try:
        st, body, rel = get(port)
    except OSError as e:
        st, body, rel = 0, repr(e), None
    t.check("v1 serves through the proxy", st == 200 and body == "hello from v1\n" and rel == "v1",
            f"{st} {body!r} {rel}")
    cs = app_containers("web")
    t.check("two v1 containers run, labelled", len(cs) == 2 and all(
        c["State"] == "running" and c["Labels"].get("slipway.release") == "r1" and
        c["Labels"].get("slipway.generation") == "1" and
        c["Labels"].get("slipway.service") == "web" and c["Labels"].get("slipway.job") == j1
        for c in cs), json.dumps([(c["Names"], c["State"], c["Labels"]) for c in cs]))
    st, insp = L.docker("GET", f"/containers/{cs[0]['Id']}/json") if cs else (0, {})
    hc = insp.get("HostConfig", {}) if isinstance(insp, dict) else {}
    t.check("containers: json-file logs capped, unless-stopped, no host ports, on the network",
            hc.get("LogConfig", {}).get("Type") == "json-file" and
            hc["LogConfig"].get("Config", {}).get("max-size") and
            hc.get("RestartPolicy", {}).get("Name") == "unless-stopped" and
            not hc.get("PortBindings") and
            env.network in insp.get("NetworkSettings", {}).get("Networks", {}),
            json.dumps(hc)[:800])

    def inv_has(release, n):
        inv = coord.inventory()
        for a in inv.values():
            got = [c for c in a.get("containers", []) if c["release"] == release and
                   c["state"] == "running"]
            if len(got) == n and all(c["app"] == "web" and c["service"] == "web" and
                                     c["started_ms"] > 0 and c["command"] and
                                     "memory_bytes" in c and c["health"] for c in got):
                return True
        return False
    t.check("inventory: the v1 containers reach the coordinator", L.wait_for(
        lambda: inv_has("r1", 2), 15), json.dumps(coord.inventory())[:1500])

    # ---- v2 under load ----
    w = L.Wrk(env, port, 6, connections=64)
    time.sleep(1.5)
    j2 = coord.desired("web", 2, web_release("r2", L.IMAGE_V2, "v2", port))[0]
    res = coord.wait_result(j2, 90)
    r = w.result()
    t.check("deploy v2 under wrk: acknowledged succeeded", res and res["result"] == "succeeded",
            json.dumps(res))
    t.check("v2 swap: 0 non-2xx and 0 socket errors",
            r["requests"] > 1000 and r["non2xx"] == 0 and r["socket_errors"] == 0, r["text"])
    t.check("v2 swap: both releases answered during the run",
            r["releases"].get("v1", 0) > 0 and r["releases"].get("v2", 0) > 0,
            json.dumps(r["releases"]))
    st, body, rel = get(port)
    t.check("v2 serves now", rel == "v2", f"{st} {body!r} {rel}")
    cs = app_containers("web")
    states = sorted((c["Labels"]["slipway.release"], c["State"]) for c in cs)
    t.check("v1 containers are stopped and kept, v2 runs",
            states == [("r1", "exited"), ("r1", "exited"), ("r2", "running"), ("r2", "running")],
            json.dumps(states))
    v1_ids = sorted(c["Id"] for c in cs if c["Labels"]["slipway.release"] == "r1")

    # ---- rollback: a newer generation naming r1 restarts the kept containers ----
    t0 = time.time()
    j3 = coord.desired("web", 3, web_release("r1", L.IMAGE_V1, "v1", port))[0]
    res = coord.wait_result(j3, 60)
    took = time.time() - t0
    t.check("rollback to r1: acknowledged succeeded", res and res["result"] == "succeeded",
            json.dumps(res))
    cs = app_containers("web")
    running = sorted(c["Id"] for c in cs if c["State"] == "running")
    t.check("rollback restarts the kept containers (same ids, nothing created)",
            running == v1_ids and len(cs) == 4, json.dumps([(c["Names"], c["State"]) for c in cs]))
    t.check(f"rollback is quick ({took:.2f} s, no pull)", took < 10 and
            "rollback_restart" in agent.log_text(), f"{took:.2f}s")
    st, body, rel = get(port)
    t.check("v1 serves again", rel == "v1", f"{st} {body!r} {rel}")

    # ---- a release that never becomes healthy ----
    before = sorted(c["Id"] for c in app_containers("web"))
    health = {"type": "http", "path": "/health", "interval_ms": 100, "timeout_ms": 500,
              "grace_ms": 1500}
    p = L.Poller(port)
    p.start()
    j4 = coord.desired("web", 4, web_release("r4", L.IMAGE_V2, "v4", port,
                                             extra_env={"HEALTH_FAIL": "1"}, health=health))[0]
    res = coord.wait_result(j4, 60)
    p.stop()
    ack = (res or {}).get("ack") or {}
    t.check("unhealthy release: acknowledged failed", res and res["result"] == "failed",
            json.dumps(res))
    t.check("unhealthy release: the reason names the check",
            "never became healthy" in ack.get("reason", "") and "503" in ack.get("reason", ""),
            ack.get("reason"))
    t.check("unhealthy release: the output tail of the container comes with it",
            "testsrv release=v4 listening" in ack.get("output_tail", ""), ack.get("output_tail"))
    after = sorted(c["Id"] for c in app_containers("web"))
    t.check("unhealthy release: its containers are removed, the old ones untouched",
            after == before, json.dumps([before, after]))
    t.check("unhealthy release: v1 kept serving (no failed request, only v1)",
            not p.failures and set(p.releases) == {"v1"} and p.total > 100,
            json.dumps({"failures": p.failures[:5], "releases": p.releases}))

    # ---- an image that cannot be pulled ----
    bad_image = f"{os.environ['SLIPWAY_TEST_REGISTRY']}/slipway-test/nope:v9"
    j5 = coord.desired("web", 5, web_release("r5", bad_image, "v5", port))[0]
    res = coord.wait_result(j5, 60)
    ack = (res or {}).get("ack") or {}
    t.check("unpullable image: acknowledged failed with the pull error",
            res and res["result"] == "failed" and "pulling" in ack.get("reason", ""),
            json.dumps(res))
    t.check("unpullable image: nothing changed",
            sorted(c["Id"] for c in app_containers("web")) == before and get(port)[2] == "v1",
            json.dumps([c["Names"] for c in app_containers("web")]))

    # ---- health data ----
    m = agent.metrics()
    t.check("per swap: 3 succeeded and 2 failed swaps of web, with the last one's duration, "
            "on the agent's metrics page",
            m.get('slipway_swaps_total{app="web",outcome="succeeded"}') == 3 and
            m.get('slipway_swaps_total{app="web",outcome="failed"}') == 2 and
            m.get('slipway_swap_last_duration_ms{app="web"}', 0) > 0,
            json.dumps({k: v for k, v in m.items() if "swap" in k}))

    def v1_output():
        for rec in coord.logs().values():
            for e in rec["last"]:
                if e["app"] == "web" and e["service"] == "web" and e["release"] == "r1" and \
                        "testsrv release=v1 listening" in e["message"]:
                    return rec
        return None
    rec = L.wait_for(v1_output, 15, 0.2)
    t.check("embedded mode: the containers' output reaches the coordinator (POST .../logs)",
            rec and rec["rejected"] == 0, json.dumps(coord.logs())[:1500])

    def metrics_batch():
        for rec in coord.metrics().values():
            names = {x["name"] for x in rec["metrics"]}
            if {"InstanceCpuPercent", "AgentPrivateMemoryBytes"} <= names:
                return names
        return None
    t.check("embedded mode: health data reaches the coordinator (POST .../metrics)",
            L.wait_for(metrics_batch, 15, 0.2), json.dumps(coord.metrics())[:1500])

    # ---- malformed jobs ----
    good = web_release("r6", L.IMAGE_V2, "v6", port)
    base = {"type": "deploy", "app": "web", "generation": 6}

    def malformed(mutate, omit=()):
        rel = json.loads(json.dumps(good))
        job = dict(base, release=rel)
        mutate(job)
        return coord.job(job, omit=omit)

    cases = [
        ("missing field (image)", lambda j: j["release"]["services"][0].pop("image"), (),
         "image: missing"),
        ("missing field (generation)", lambda j: j.pop("generation"), (), "generation: missing"),
        ("bad image reference", lambda j: j["release"]["services"][0].update(
            image="Registry.Local/WEB:v1"), (), "not a valid image reference"),
        ("unknown field", lambda j: j["release"]["services"][0].update(replicas=3), (),
         "unknown key \"replicas\""),
        ("1 MB environment", lambda j: j["release"]["services"][0]["environment"].update(
            BIG="x" * (1 << 20)), (), "more than 262144 bytes"),
    ]
    for name, mutate, omit, want in cases:
        jid = malformed(mutate, omit)
        res = coord.wait_result(jid, 30)
        ack = (res or {}).get("ack") or {}
        t.check(f"malformed job ({name}): acknowledged failed with a reason",
                res and res["result"] == "failed" and want in ack.get("reason", ""),
                json.dumps(res)[:600])
    t.check("malformed jobs changed nothing",
            sorted(c["Id"] for c in app_containers("web")) == before and get(port)[2] == "v1",
            json.dumps([c["Names"] for c in app_containers("web")]))
    # Generation 6 was never applied: a valid job at generation 6 still deploys.
    j6 = coord.desired("web", 6, good)[0]
    res = coord.wait_result(j6, 60)
    t.check("a valid job at the malformed jobs' generation still deploys",
            res and res["result"] == "succeeded" and get(port)[2] == "v6", json.dumps(res))
    stopped = [c for c in app_containers("web") if c["State"] != "running"]
    rels = sorted({c["Labels"]["slipway.release"] for c in stopped})
    t.check("keep_releases: stopped releases kept (r1, r2)", rels == ["r1", "r2"],
            json.dumps(rels))

    # ---- a worker without a port swaps by health ----
    def worker(rid, tag):
        return L.release(rid, "jobs", [L.service(
            name="worker", image=L.IMAGE_V1, env={"RELEASE": tag}, port=None, count=1,
            health={"type": "running", "interval_ms": 100, "grace_ms": 800})])
    jw1 = coord.desired("jobs", 1, worker("w1", "w1"))[0]
    res1 = coord.wait_result(jw1, 60)
    jw2 = coord.desired("jobs", 2, worker("w2", "w2"))[0]
    res2 = coord.wait_result(jw2, 60)
    ws = sorted((c["Labels"]["slipway.release"], c["State"]) for c in app_containers("jobs"))
    t.check("worker: two releases swapped by health (running after grace)",
            res1 and res2 and res1["result"] == res2["result"] == "succeeded" and
            ws == [("w1", "exited"), ("w2", "running")], json.dumps([res1, res2, ws]))

    # ---- heartbeat reports the apps ----
    def hb_apps():
        for a in coord.agents():
            apps = {x["app"]: x for x in a.get("last_heartbeat", {}).get("apps", [])}
            if apps.get("web", {}).get("generation") == 6 and apps.get("jobs", {}).get(
                    "generation") == 2:
                return apps
        return None
    apps = L.wait_for(hb_apps, 10)
    t.check("heartbeat carries each app's generation and release",
            apps and apps["web"]["release"] == "r6" and apps["web"]["state"] == "running",
            json.dumps(coord.agents())[:800])

    # ---- routes are sent again when the agent starts ----
    agent.control("DELETE", "/v1/routes/web/web")
    try:
        gone = get(port)[0]
    except OSError:
        gone = "refused"
    except urllib.error.HTTPError as e:
        gone = e.code
    agent.kill()
    agent.start()
    def back():
        try:
            return get(port)[2] == "v6"
        except OSError:
            return False
    t.check("a route the proxy lost is sent again when the agent restarts (resync)",
            gone != 200 and L.wait_for(back, 15) and "swap.resync app=web" in agent.log_text(),
            f"after delete: {gone}")

    # ---- remove ----
    jr = coord.desired("jobs", 3, None, type_="remove")[0]
    res = coord.wait_result(jr, 60)
    t.check("remove job: acknowledged succeeded and the app's containers are gone",
            res and res["result"] == "succeeded" and not app_containers("jobs"), json.dumps(res))
    jr = coord.desired("web", 7, None, type_="remove")[0]
    res = coord.wait_result(jr, 60)
    def refused():
        try:
            get(port)
            return False
        except OSError:
            return True
    t.check("removing a proxied app: its route and listener go, and all its containers",
            res and res["result"] == "succeeded" and not app_containers("web") and
            L.wait_for(refused, 5), json.dumps(res))
    t.check("the agent logged no error", " error " not in agent.log_text(),
            "\n".join(x for x in agent.log_text().splitlines() if " error " in x)[:2000])
finally:
    try:
        if not agent.alive():
            t.fail("the agent is still alive at the end", agent.log_text()[-3000:])
        else:
            t.ok("the agent is still alive at the end")
    except NameError:
        pass
    env.close()
sys.exit(t.done())
