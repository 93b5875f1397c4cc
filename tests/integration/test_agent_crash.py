#!/usr/bin/env python3
"""The kill test: the agent (the deployer, not the proxy) is SIGKILLed right
after it journalled each step of a swap in turn (debug.crash_at, a test hook),
under wrk load, then started again. Every time: the proxy kept serving (0
failed requests over the whole run), the job ends in a definite state (the
redelivered or recovered job is acknowledged succeeded), the new release
serves, and no container is orphaned (every running container of the app is
in the proxy's route, nothing half-made is left).
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
STEPS = ["begin", "pull", "create", "start", "health", "switch", "drain", "stop", "retire", "done"]
t = Tap(4 * len(STEPS) + 4)
env = L.Env("crash")


def route_backends(agent):
    st, doc = agent.control("GET", "/v1/routes")
    out = set()
    for r in (doc or {}).get("routes", []):
        if r.get("app") == "web":
            out |= {b["id"] for b in r.get("backends", [])}
    return out


try:
    coord = env.coordinator(lease_s=5)
    # A small journal: compactions happen between (and across) the crashes.
    agent = env.agent(coord, extra={"agent.journal_max_size": "4k"}).start()
    agent.wait_registered()
    port = L.free_port()

    def rel(n):
        image = L.IMAGE_V1 if n % 2 else L.IMAGE_V2
        return L.release(f"r{n}", "web", [L.service(image=image, env={"RELEASE": f"r{n}"},
                                                     listen=port, count=2)])
    j = coord.desired("web", 1, rel(1))[0]
    res = coord.wait_result(j, 90)
    t.check("release r1 deployed before the kills", res and res["result"] == "succeeded",
            json.dumps(res))
    w = L.Wrk(env, port, 900, connections=64)
    time.sleep(1)
    gen = 1
    for step in STEPS:
        gen += 1
        agent.kill()
        agent.start({"SLIPWAY_AGENT_DEBUG_CRASH_AT": step})
        j = coord.desired("web", gen, rel(gen))[0]
        rc = agent.wait_exit(60)
        t.check(f"crash at {step}: the agent killed itself right after journalling it",
                rc == -9 and f"step={step} (debug.crash_at" in agent.log_text(),
                f"exit {rc}; " + agent.log_text()[-1500:])
        agent.start()
        res = coord.wait_result(j, 90)
        t.check(f"crash at {step}: the job ends acknowledged succeeded after the restart",
                res and res["result"] == "succeeded",
                json.dumps(res) + "\n" + agent.log_text()[-3000:])
        tail = agent.log_text().split(f"step={step} (debug.crash_at")[-1]
        how = ("completed (switch journalled)" if "recover_forward" in tail else
               "undone, redelivered, run again" if "recover_undo" in tail else
               "ack re-sent" if step == "done" else "?")
        print(f"# crash at {step}: {how}; attempt {res and res['attempt']}")
        ok = L.wait_for(lambda: L.urllib.request.urlopen(
            f"http://127.0.0.1:{port}/", timeout=5).getheader("X-Release") == f"r{gen}", 10)
        t.check(f"crash at {step}: r{gen} serves", ok)

        def orphans():
            cs = [c for c in env.mine() if c["Labels"].get("slipway.app") == "web"]
            backends = route_backends(agent)
            running = [c for c in cs if c["State"] == "running"]
            bad = [c["Names"][0] for c in running if c["Id"][:12] not in backends]
            bad += [c["Names"][0] for c in cs if c["State"] == "created"]
            bad += [c["Names"][0] for c in running
                    if c["Labels"]["slipway.release"] != f"r{gen}"]
            if len(running) != 2:
                bad.append(f"{len(running)} running")
            return bad
        # Inventory and retire settle a moment after the ack.
        left = L.wait_for(lambda: not orphans(), 10) is not None
        t.check(f"crash at {step}: no orphaned container", left, json.dumps(orphans()))
    time.sleep(1)
    w.interrupt()
    r = w.result()
    t.check("wrk across every kill: 0 non-2xx, 0 socket errors",
            r["requests"] > 10000 and r["non2xx"] == 0 and r["socket_errors"] == 0, r["text"])
    stopped = {c["Labels"]["slipway.release"] for c in env.mine() if c["State"] != "running"}
    t.check("retired down to 3 kept releases", len(stopped) == 3, json.dumps(sorted(stopped)))
    t.check("the journal was compacted along the way", "journal.compacted" in agent.log_text(),
            "no journal.compacted line")
    print(f"# wrk: {r['requests']} requests, releases {json.dumps(r['releases'])}")
finally:
    env.close()
sys.exit(t.done())
