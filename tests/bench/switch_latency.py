#!/usr/bin/env python3
"""Switch latency, measured from outside: from the new container's first
passing health check (the agent logs health.pass with its wall-clock time,
at_ms) to the first response a client receives from the new release (pollers
on keep-alive connections through the proxy record the first X-Release of
each release, in wall-clock ms).

    tests/bench/switch_latency.py [SWAPS]        (default 12; median of them)

Needs the integration environment (tests/run sets it); without it the
harness is brought up and down here. Prints one line per swap and a summary:
    switch latency: median 4.1 ms, min 2.9, max 7.0 (12 swaps)
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))


def harness_env():
    if os.environ.get("SLIPWAY_TEST_IMAGE"):
        return None
    build = os.environ.get("SLIPWAY_BUILD", os.path.join(TOP, "build"))
    envfile = os.path.join(build, "bench-switch.env")
    subprocess.run([os.path.join(TOP, "tests/integration/harness.sh"), "up", envfile, build],
                   check=True, stdout=subprocess.DEVNULL)
    for line in open(envfile):
        k, _, v = line.strip().partition("=")
        os.environ[k] = v
    return envfile


def main():
    swaps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    envfile = harness_env()
    import agentlib as L
    env = L.Env("switch")
    try:
        coord = env.coordinator(lease_s=10)
        agent = env.agent(coord).start()
        agent.wait_registered()
        port = L.free_port()

        def rel(n):
            image = L.IMAGE_V1 if n % 2 else L.IMAGE_V2
            # A short health interval: the pass is seen within 10 ms of the
            # container being ready, and it is the pass we measure from.
            health = {"type": "http", "path": "/health", "interval_ms": 10,
                      "timeout_ms": 1000, "grace_ms": 20000}
            return L.release(f"r{n}", "web", [L.service(
                image=image, env={"RELEASE": f"r{n}"}, listen=port, count=1, health=health)])
        res = coord.wait_result(coord.desired("web", 1, rel(1))[0], 90)
        assert res and res["result"] == "succeeded", res
        pollers = [L.Poller(port) for _ in range(3)]
        for p in pollers:
            p.start()
        time.sleep(0.5)
        lat = []
        for n in range(2, swaps + 2):
            res = coord.wait_result(coord.desired("web", n, rel(n))[0], 90)
            assert res and res["result"] == "succeeded", res
            time.sleep(0.3)
            cid = [c["Id"][:12] for c in env.mine()
                   if c["Labels"].get("slipway.release") == f"r{n}"][0]
            m = re.search(r"health\.pass container=" + cid + r" .*? at_ms=(\d+)",
                          agent.log_text())
            first = min((p.first_seen.get(f"r{n}") for p in pollers
                         if p.first_seen.get(f"r{n}")), default=None)
            if not m or not first:
                print(f"swap {n}: no measurement (pass {bool(m)}, first {first})")
                continue
            ms = first - int(m.group(1))
            lat.append(ms)
            print(f"swap r{n}: health pass -> first r{n} response: {ms} ms")
        for p in pollers:
            p.stop()
        fails = sum(len(p.failures) for p in pollers)
        total = sum(p.total for p in pollers)
        print(f"client: {total} requests, {fails} failed")
        print(f"switch latency: median {statistics.median(lat):.1f} ms, min {min(lat)}, "
              f"max {max(lat)} ({len(lat)} swaps)")
        return 0 if statistics.median(lat) <= 100 and fails == 0 else 1
    finally:
        env.close()
        if envfile:
            subprocess.run([os.path.join(TOP, "tests/integration/harness.sh"), "down",
                            envfile, os.environ.get("SLIPWAY_BUILD", "build")],
                           stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
