#!/usr/bin/env python3
"""Ten releases in a row through the agent and its proxy under load: wrk
(keep-alive, 64 connections) plus slow requests and POSTs with bodies run
while the releases are swapped in one after another. 0 non-2xx, 0 socket
errors, every release seen answering, old releases retired down to
deploy.keep_releases.
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
RELEASES = 10
t = Tap(8)
env = L.Env("releases")
try:
    coord = env.coordinator(lease_s=5)
    agent = env.agent(coord).start()
    agent.wait_registered()
    port = L.free_port()

    def rel(n):
        image = L.IMAGE_V1 if n % 2 else L.IMAGE_V2
        return L.release(f"r{n}", "web", [L.service(image=image, env={"RELEASE": f"r{n}"},
                                                     listen=port, count=2)])
    j = coord.desired("web", 1, rel(1))[0]
    res = coord.wait_result(j, 90)
    w = L.Wrk(env, port, 300, connections=64)
    slow = L.Poller(port, path="/slow?ms=300")
    post = L.Poller(port, path="/echo", body=os.urandom(48 << 10))
    slow.start()
    post.start()
    time.sleep(1)
    results = [res]
    for n in range(2, RELEASES + 1):
        j = coord.desired("web", n, rel(n))[0]
        results.append(coord.wait_result(j, 90))
        time.sleep(0.3)
    time.sleep(1)
    w.interrupt()
    slow.stop()
    post.stop()
    r = w.result()
    ok = [x for x in results if x and x["result"] == "succeeded"]
    t.check(f"{RELEASES} releases acknowledged succeeded", len(ok) == RELEASES,
            json.dumps([x and (x["id"], x["result"]) for x in results]))
    t.check("wrk: 0 non-2xx", r["requests"] > 10000 and r["non2xx"] == 0, r["text"])
    t.check("wrk: 0 socket errors", r["socket_errors"] == 0, r["text"])
    seen = sorted(r["releases"], key=lambda k: int(k[1:]) if k[1:].isdigit() else 0)
    t.check(f"wrk saw all {RELEASES} releases answer",
            seen == [f"r{n}" for n in range(1, RELEASES + 1)], json.dumps(r["releases"]))
    t.check("slow requests (300 ms) crossed every switch without a failure",
            not slow.failures and slow.total > 10, json.dumps(slow.failures[:5]))
    t.check("POSTs with 48 KiB bodies crossed every switch without a failure",
            not post.failures and post.total > 100, json.dumps(post.failures[:5]))
    cs = env.mine()
    running = sorted({c["Labels"]["slipway.release"] for c in cs if c["State"] == "running"})
    stopped = sorted({c["Labels"]["slipway.release"] for c in cs if c["State"] != "running"})
    t.check("only the newest release runs; 3 stopped releases kept, older ones removed",
            running == [f"r{RELEASES}"] and
            stopped == sorted(f"r{n}" for n in range(RELEASES - 3, RELEASES)) and len(cs) == 8,
            json.dumps({"running": running, "stopped": stopped, "n": len(cs)}))
    t.check("the agent logged no error", " error " not in agent.log_text(),
            "\n".join(x for x in agent.log_text().splitlines() if " error " in x)[:2000])
    print(f"# wrk: {r['requests']} requests, releases {json.dumps(r['releases'])}")
finally:
    env.close()
sys.exit(t.done())
