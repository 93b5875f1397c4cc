#!/usr/bin/env python3
"""The agent's instance id without agent.instance_id: it asks the instance
metadata service (IMDSv2: a token PUT, then GET /latest/meta-data/instance-id,
at AWS_EC2_METADATA_SERVICE_ENDPOINT as the AWS SDKs do; tests/fakes/imds.py
here) and registers with that id; when IMDS does not answer (nothing listens
there, or AWS_EC2_METADATA_DISABLED=true) it falls back to the hostname,
quickly. The id given in the configuration wins over both.
"""
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(6)
env = L.Env("ident")
FAKE_IMDS = os.path.join(L.TOP, "tests", "fakes", "imds.py")
IID = "i-0ab12cd34ef56a78" + env.run[:1]


def registered(coord, instance_id, timeout=20):
    return L.wait_for(lambda: [a for a in coord.agents() if a.get("instance_id") == instance_id],
                      timeout, 0.1)


imds = subprocess.Popen([sys.executable, FAKE_IMDS, "--instance-id", IID],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
try:
    imds_url = f"http://127.0.0.1:{int(imds.stdout.readline())}"
    coord = env.coordinator()

    # 1. From IMDS.
    a1 = env.agent(coord, instance="imds", extra={"agent.instance_id": None})
    a1.start({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url, "AWS_EC2_METADATA_DISABLED": ""})
    got = registered(coord, IID)
    t.check(f"no agent.instance_id: registered with IMDS's instance id {IID}", got,
            json.dumps(coord.agents()) + a1.log_text()[-1500:])
    t.check("the agent says where its id came from",
            f"instance_id={IID} (from the instance metadata)" in a1.log_text(),
            a1.log_text()[-1500:])
    a1.stop()

    # 2. IMDS does not answer (nothing listens there): the hostname, without a long wait.
    dead = L.free_port()
    a2 = env.agent(coord, instance="noimds", extra={"agent.instance_id": None})
    t0 = time.time()
    a2.start({"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{dead}",
              "AWS_EC2_METADATA_DISABLED": ""})
    host = socket.gethostname()
    got = registered(coord, host)
    took = time.time() - t0
    t.check(f"IMDS silent: registered with the hostname {host}", got,
            json.dumps(coord.agents()) + a2.log_text()[-1500:])
    t.check(f"IMDS silent: the fallback is quick ({took:.1f} s)", took < 8,
            a2.log_text()[-1500:])
    t.check("IMDS silent: the log says why",
            "source=hostname" in a2.log_text() and "session token" in a2.log_text(),
            a2.log_text()[-1500:])
    a2.stop()

    # 3. The configured id wins, and IMDS is not even asked.
    before = json.loads(subprocess.run(["curl", "-s", imds_url + "/_control"],
                                       capture_output=True, text=True).stdout)["counts"]["total"]
    a3 = env.agent(coord, instance="conf")
    a3.start({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url})
    after_reg = a3.wait_registered()
    after = json.loads(subprocess.run(["curl", "-s", imds_url + "/_control"],
                                      capture_output=True, text=True).stdout)["counts"]["total"]
    t.check("agent.instance_id set: used as is, IMDS not asked", after_reg and after == before,
            f"imds requests {before} -> {after}")
finally:
    env.close()
    imds.stdin.close()
    imds.terminate()
    imds.wait(5)
sys.exit(t.done())
