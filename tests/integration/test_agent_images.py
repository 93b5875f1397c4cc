#!/usr/bin/env python3
"""Health check kinds and image pruning through the real agent: a Docker
HEALTHCHECK that passes and one that fails, a TCP connect check, and the
retire step pruning an image once no kept container uses it. A free-disk
check that refuses to pull comes last.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(9)
env = L.Env("images")


def rel(rid, image, port, health, env_extra=None):
    e = {"RELEASE": rid}
    e.update(env_extra or {})
    return L.release(rid, "web", [L.service(image=image, env=e, listen=port, count=1,
                                             health=health)])


try:
    healthy, healthy_id = L.make_image(env, "hc-ok", [
        'HEALTHCHECK --interval=1s --timeout=1s --retries=2 '
        'CMD wget -q -O /dev/null http://127.0.0.1:8080/health || exit 1'])
    sick, _ = L.make_image(env, "hc-bad", [
        'HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD exit 1'])
    coord = env.coordinator(lease_s=5)
    agent = env.agent(coord, extra={"deploy.keep_releases": "1"}).start()
    agent.wait_registered()
    port = L.free_port()
    docker_hc = {"type": "docker", "interval_ms": 200, "timeout_ms": 1000, "grace_ms": 15000}

    res = coord.wait_result(coord.desired("web", 1, rel("r1", healthy, port, docker_hc))[0], 90)
    t.check("health docker: an image whose HEALTHCHECK passes is deployed",
            res and res["result"] == "succeeded", json.dumps(res))
    res = coord.wait_result(coord.desired("web", 2, rel("r2", sick, port, docker_hc))[0], 90)
    ack = (res or {}).get("ack") or {}
    t.check("health docker: a failing HEALTHCHECK fails the release (unhealthy)",
            res and res["result"] == "failed" and "unhealthy" in ack.get("reason", ""),
            json.dumps(res))
    res = coord.wait_result(coord.desired("web", 3, rel("r3", L.IMAGE_V1, port, docker_hc))[0],
                            90)
    ack = (res or {}).get("ack") or {}
    t.check("health docker: an image without HEALTHCHECK is refused at once",
            res and res["result"] == "failed" and "no HEALTHCHECK" in ack.get("reason", ""),
            json.dumps(res))
    tcp = {"type": "tcp", "interval_ms": 100, "timeout_ms": 1000, "grace_ms": 15000}
    res = coord.wait_result(coord.desired("web", 4, rel("r4", L.IMAGE_V2, port, tcp))[0], 90)
    t.check("health tcp: a TCP connect check deploys", res and res["result"] == "succeeded",
            json.dumps(res))
    http = {"type": "http", "path": "/health", "interval_ms": 100, "timeout_ms": 1000,
            "grace_ms": 15000}
    res = coord.wait_result(coord.desired("web", 5, rel("r5", L.IMAGE_V1, port, http))[0], 90)
    t.check("r5 deployed (keep_releases 1: r1 goes)", res and res["result"] == "succeeded",
            json.dumps(res))
    rels = sorted(c["Labels"]["slipway.release"] for c in env.mine())
    t.check("only r5 (running) and r4 (kept) are left", rels == ["r4", "r5"], json.dumps(rels))
    t.check("the image only r1 used is pruned", not L.image_exists(healthy_id),
            agent.log_text()[-1500:])
    # The free-disk check: an impossible minimum refuses to pull.
    agent.kill()
    agent.start({"SLIPWAY_AGENT_DEPLOY_MIN_FREE_DISK": "100T"})
    res = coord.wait_result(coord.desired("web", 6, rel("r6", healthy, port, http))[0], 90)
    ack = (res or {}).get("ack") or {}
    t.check("free disk under deploy.min_free_disk: the pull is refused with a clear reason",
            res and res["result"] == "failed" and "not enough disk" in ack.get("reason", ""),
            json.dumps(res))
    t.check("... and nothing changed", sorted(c["Labels"]["slipway.release"]
                                              for c in env.mine()) == ["r4", "r5"],
            json.dumps([c["Names"] for c in env.mine()]))
finally:
    env.close()
sys.exit(t.done())
