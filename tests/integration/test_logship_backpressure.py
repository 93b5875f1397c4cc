#!/usr/bin/env python3
"""Backpressure in the log shipper: a container writes faster than a slow
destination takes its batches. The real agent must hold the container's log
stream back (pause the transfer) and resume it, on the one connection it
opened: no second request (a new request with since= makes the engine scan
the whole log file again) and nothing in the spool (the destination answers
all along; the spool is for outages). Every line still arrives once, in
order. The fake CloudWatch Logs (tests/fakes/cloudwatch.py) answers each
PutLogEvents of the stream half a second late for a while.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
import loglib as G  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
t = Tap(5)
env = L.Env("logbp")
cw = G.FakeCloudWatch()
creds = os.path.join(env.tmp, "credentials")
G.write_credentials(creds)
app = "bp" + env.run
group = G.PREFIX + app
LINES = 40000   # of 200 bytes: some 9 MB, nine or more full batches

try:
    coord = env.coordinator()
    # memory_max well above what one stream holds: the stream's own share
    # (one batch in flight, two waiting) is what must make it pause.
    agent, mport = G.cloudwatch_agent(env, coord, cw, creds, extra={
        "logs.flush_interval": "200ms", "logs.memory_max": "64M",
        "logs.request_timeout": "20s"})
    G.start_agent(agent)
    agent.wait_registered()
    cid = G.container(env, app, "flood")
    sname = G.stream_name("flood", "logs-" + env.run, cid)
    L.wait_for(lambda: (cw.stream(group, sname) or {}).get("count"), 30, 0.1)
    before = G.prom(mport)
    cw.fault("slow", group=group, stream=sname, ms=500, seconds=6)
    G.testsrv(cid, f"/log?n={LINES}&size=200")
    s = G.wait_lines(cw, group, sname, LINES, 180)
    after = G.prom(mport)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)
    print(f"# lines: {s}")
    print(f"# agent: pauses={delta('slipway_log_pauses_total')} "
          f"reads={delta('slipway_log_reads_total')} "
          f"spooled={delta('slipway_log_events_spooled_total')} "
          f"batches={delta('slipway_log_batches_sent_total')} "
          f"peak_memory_now={after.get('slipway_log_memory_bytes')}")
    t.check(f"slow destination: all {LINES} lines arrive once, in order",
            s and s["distinct"] == LINES and s["duplicates"] == 0 and s["missing"] == 0 and
            s["ordered"], s)
    t.check("the container's log stream was paused for backpressure",
            delta("slipway_log_pauses_total") > 0, after)
    t.check("paused and resumed on the same connection: no new log request",
            "slipway_log_reads_total" in after and after["slipway_log_reads_total"] >= 1 and
            delta("slipway_log_reads_total") == 0, after)
    t.check("nothing went to the spool while the destination answered",
            delta("slipway_log_events_spooled_total") == 0, after)
    t.check("the agent is still running, no stream is left paused",
            agent.alive() and L.wait_for(lambda: G.prom(mport).get("slipway_log_paused") == 0,
                                         10, 0.2), agent.log_text()[-2000:])
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
