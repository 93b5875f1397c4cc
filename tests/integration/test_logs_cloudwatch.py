#!/usr/bin/env python3
"""`slipway logs` from CloudWatch Logs (coordinator/logcw.c): the real
coordinator with logs.cloudwatch_region, tests/fakes/cloudwatch.py (which
checks every signature) holding what agents shipped, and the real CLI.

An app's group across its container streams, oldest first (FilterLogEvents,
paged), the agents' EMF metrics stream left out; --service as a stream name
prefix; --limit keeps the newest; one container's stream with GetLogEvents;
`after` continues from an answer's `next`; follow streams what arrives later
exactly once; an unknown app is 404, an app without a log group yet answers
no events, CloudWatch down is 503; `slipway logs` prints it all.
"""
import json
import os
import subprocess
import sys
import threading
import time
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import loglib as G  # noqa: E402
from coord_proc import Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
GROUP = "/slipway/web"


def put(cw, stream, msgs, t0):
    G.aws_call(cw, "CreateLogGroup", {"logGroupName": GROUP})
    G.aws_call(cw, "CreateLogStream", {"logGroupName": GROUP, "logStreamName": stream})
    st, out = G.aws_call(cw, "PutLogEvents", {
        "logGroupName": GROUP, "logStreamName": stream,
        "logEvents": [{"timestamp": t0 + i * 10, "message": m} for i, m in enumerate(msgs)]})
    assert st == 200, (st, out)


def messages(body):
    return [e["message"] for e in body.get("events", [])]


def main():
    t = Tap(12)
    cw = G.FakeCloudWatch()
    os.environ["AWS_ACCESS_KEY_ID"] = G.AKID
    os.environ["AWS_SECRET_ACCESS_KEY"] = G.SECRET
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    co = Coordinator(extra={"logs.cloudwatch_region": "us-east-1",
                            "logs.cloudwatch_endpoint": cw.url})
    try:
        with co:
            key = co.admin_key
            st, _, _ = co.call("POST", "/v1/apps", body={"name": "web"}, token=key)
            assert st == 201, st
            st, _, _ = co.call("POST", "/v1/apps", body={"name": "quiet"}, token=key)
            now = int(time.time() * 1000)
            t0 = now - 120000
            st, b, _ = co.call("GET", "/v1/apps/web/logs", token=key)
            t.check("an app that shipped nothing yet: no events (no log group)",
                    st == 200 and b["events"] == [], (st, b))
            put(cw, "web/i-1/aaaaaaaaaaaa", ["a0", "a1", "a2"], t0)
            put(cw, "web/i-2/bbbbbbbbbbbb", ["b0", "b1", "b2"], t0 + 5)
            put(cw, "worker/i-1/cccccccccccc", ["w0", "w1"], t0 + 1)
            put(cw, "metrics/i-1", ['{"_aws": {}}'], t0 + 2)
            st, b, _ = co.call("GET", "/v1/apps/web/logs", token=key)
            t.check("every container stream, oldest first, the metrics stream left out",
                    st == 200 and messages(b) == ["a0", "w0", "b0", "a1", "w1", "b1", "a2", "b2"],
                    (st, b))
            e = b["events"][0] if st == 200 and b["events"] else {}
            t.check("events carry time, service, instance, container and the stream",
                    e.get("ts_ms") == t0 and e.get("service") == "web" and
                    e.get("instance") == "i-1" and e.get("container") == "aaaaaaaaaaaa" and
                    e.get("log_stream") == "web/i-1/aaaaaaaaaaaa" and e.get("id") and
                    e.get("app") == "web", e)
            st, b, _ = co.call("GET", "/v1/apps/web/logs?service=web&limit=3", token=key)
            t.check("service= is a stream prefix; limit keeps the newest",
                    st == 200 and messages(b) == ["b1", "a2", "b2"], (st, b))
            st, b, _ = co.call("GET", "/v1/apps/web/logs?stream=web/i-2/bbbbbbbbbbbb",
                               token=key)
            t.check("stream= reads one container's stream (GetLogEvents)",
                    st == 200 and messages(b) == ["b0", "b1", "b2"] and
                    cw.stats()["requests"].get("GetLogEvents", 0) >= 1, (st, b))
            st, b, _ = co.call("GET", "/v1/apps/web/logs?service=web", token=key)
            cursor = b.get("next")
            put(cw, "web/i-1/aaaaaaaaaaaa", ["a3", "a4"], now - 1000)
            st, b2, _ = co.call("GET", "/v1/apps/web/logs?after=" + cursor, token=key)
            t.check("after=<next> continues after the last event, nothing twice",
                    st == 200 and messages(b2) == ["a3", "a4"], (cursor, st, b2))
            since = t0 + 5
            st, b, _ = co.call("GET", f"/v1/apps/web/logs?since={since}&service=worker",
                               token=key)
            t.check("since= starts there", st == 200 and messages(b) == ["w1"], (st, b))
            st, b, _ = co.call("GET", "/v1/apps/nope/logs", token=key)
            st2, b2, _ = co.call("GET", "/v1/apps/web/logs?after=garbage", token=key)
            t.check("an unknown app is 404; a malformed cursor 400", st == 404 and st2 == 400,
                    (st, b, st2, b2))

            # follow: what arrives later, once.
            conn = http.client.HTTPConnection("127.0.0.1", co.port, timeout=30)
            conn.request("GET", "/v1/apps/web/logs?follow=1&service=web&limit=2",
                         headers={"Authorization": "Bearer " + key})
            resp = conn.getresponse()
            got = []

            def reader():
                buf = b""
                while True:
                    try:
                        chunk = resp.read1(65536)
                    except (OSError, ValueError, AttributeError):
                        return
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            got.append(json.loads(line)["message"])
            th = threading.Thread(target=reader, daemon=True)
            th.start()
            time.sleep(1.5)
            put(cw, "web/i-2/bbbbbbbbbbbb", ["late1", "late2"], int(time.time() * 1000))
            deadline = time.time() + 10
            while time.time() < deadline and "late2" not in got:
                time.sleep(0.1)
            time.sleep(2.5)  # a few more polls: nothing may come twice
            conn.close()
            t.check("follow: the newest events, then what arrives later, each once",
                    resp.status == 200 and got == ["a3", "a4", "late1", "late2"], got)

            cw.fault("error500", count=20, target="FilterLogEvents")
            st, b, _ = co.call("GET", "/v1/apps/web/logs", token=key)
            cw.clear()
            t.check("CloudWatch unreachable: 503 unavailable", st == 503 and
                    b["error"]["code"] == "unavailable", (st, b))

            cli = os.path.join(co_build(), "slipway")
            env = dict(os.environ, SLIPWAY_HOST=f"http://127.0.0.1:{co.port}",
                       SLIPWAY_API_KEY=key, HOME=co.tmp)
            p = subprocess.run([cli, "logs", "web", "--service", "worker"], env=env,
                               capture_output=True, text=True, timeout=60)
            lines = p.stdout.strip().splitlines()
            t.check("`slipway logs web --service worker` prints the worker's two lines",
                    p.returncode == 0 and len(lines) == 2 and lines[0].endswith("w0") and
                    "worker[cccccccccccc]" in lines[0], p.stdout + p.stderr)
            st, b, _ = co.call("GET", "/v1/apps/quiet/logs", token=key)
            stats = cw.stats()
            t.check("the embedded sink is not used: reads went to CloudWatch (FilterLogEvents)",
                    st == 200 and b["events"] == [] and
                    stats["requests"].get("FilterLogEvents", 0) >= 8, stats["requests"])
    finally:
        cw.close()
    return t.done()


def co_build():
    b = os.environ.get("SLIPWAY_BUILD") or os.path.join(TOP, "build")
    return b if os.path.isabs(b) else os.path.join(TOP, b)


if __name__ == "__main__":
    sys.exit(main())
