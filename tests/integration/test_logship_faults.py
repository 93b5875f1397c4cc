#!/usr/bin/env python3
"""The log shipper under faults: the real agent ships container output to the
fake CloudWatch Logs (tests/fakes/cloudwatch.py: real JSON 1.1 protocol,
SigV4 checked independently, the service's limits), which injects
throttling, 500s, dropped connections (before and after storing), slow
answers, partial rejections, a deleted group, an expired session token and
clock skew, one kind per container. Then an outage (spooled, drained in
order) and two SIGKILLs of the agent in the middle of a flood. Every line a
container wrote must arrive (checked by the sequence numbers testsrv puts
in its lines); duplicates are counted and must stay within one batch per
stream per crash (or per dropped answer); rejected events are counted by the
agent.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
import loglib as G  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
BATCH_MAX = 10000  # events in one PutLogEvents: the most one repeat can cost
t = Tap(21)
env = L.Env("logs")
cw = G.FakeCloudWatch(token="token-one")
creds = os.path.join(env.tmp, "credentials")
G.write_credentials(creds, "token-one")
app = "lg" + env.run
group = G.PREFIX + app
inst = "logs-" + env.run


def lines_ok(name, s, n, dups_max=0, ordered=True):
    ok = bool(s) and s["distinct"] == n and s["missing"] == 0 and s["max"] == n and \
        s["duplicates"] <= dups_max and (s["ordered"] or not ordered)
    print(f"# {name}: {s}")
    return t.check(name, ok, f"expected {n} lines, duplicates <= {dups_max}: {s}")


def settled(stream, kind="log", quiet=2.0, timeout=30):
    """The stream's summary once nothing more arrived for `quiet` seconds (late
    repeats of a dropped answer included)."""
    deadline = time.time() + timeout
    last, since = None, time.time()
    while time.time() < deadline:
        s = G.seqs(cw, group, stream, kind)
        cur = s and s["count"]
        if cur != last:
            last, since = cur, time.time()
        elif time.time() - since >= quiet:
            return s
        time.sleep(0.2)
    return G.seqs(cw, group, stream, kind)


def wait_stream(stream, timeout=30):
    """The container's start-up line arrived: the agent follows it."""
    return L.wait_for(lambda: (cw.stream(group, stream) or {}).get("count"), timeout, 0.1)


try:
    coord = env.coordinator()
    agent, mport = G.cloudwatch_agent(env, coord, cw, creds)
    G.start_agent(agent)
    agent.wait_registered()

    # 1. No fault.
    cid = G.container(env, app, "plain")
    sname = G.stream_name("plain", inst, cid)
    G.testsrv(cid, "/log?n=2000&size=120")
    s = G.wait_lines(cw, group, sname, 2000, 60)
    lines_ok("no fault: 2000 lines arrive once, in order, in group/stream "
             f"{group} {sname}", s, 2000)

    # 2. One fault kind per container.
    faults = [("throttle", {"count": 6}, 0), ("error500", {"count": 5}, 0),
              ("drop", {"count": 4}, 0), ("slow", {"count": 3, "ms": 2500}, 0),
              ("drop_after", {"count": 2}, 2 * BATCH_MAX)]
    for kind, kw, dups in faults:
        service = kind.replace("_", "-")
        cid = G.container(env, app, service)
        sname = G.stream_name(service, inst, cid)
        wait_stream(sname)
        cw.fault(kind, group=group, stream=sname, **kw)
        G.testsrv(cid, "/log?n=3000&size=120")
        G.wait_lines(cw, group, sname, 3000, 120)
        s = settled(sname)
        lines_ok(f"{kind} x{kw['count']}: every line arrives", s, 3000, dups,
                 ordered=kind != "drop_after")
        if kind == "drop_after":
            t.check("drop after storing: the repeats are counted by the fake (at most one "
                    "batch per dropped answer)", s and 0 < s["duplicates"] <= dups, s)
    st = cw.stats()
    print(f"# fake: {st['errors']}")
    t.check("the faults were really served (throttling, 500s, drops)",
            st["errors"].get("ThrottlingException", 0) >= 6 and
            st["errors"].get("ServiceUnavailableException", 0) >= 5 and
            st["errors"].get("fault:drop", 0) >= 4, st["errors"])

    # 3. Partial rejection: the service drops 5 events as too old.
    cid = G.container(env, app, "partial")
    sname = G.stream_name("partial", inst, cid)
    wait_stream(sname)
    before = G.prom(mport).get('slipway_log_events_dropped_total{reason="rejected"}', 0)
    cw.fault("partial", group=group, stream=sname, too_old=5)
    G.testsrv(cid, "/log?n=1000&size=120")
    L.wait_for(lambda: (G.seqs(cw, group, sname) or {}).get("max") == 1000, 60, 0.2)
    s = G.seqs(cw, group, sname)
    rejected = G.prom(mport).get('slipway_log_events_dropped_total{reason="rejected"}', 0) - before
    t.check("partial rejection: 995 of 1000 stored, the 5 rejected counted by the agent",
            s and s["distinct"] == 995 and rejected == 5 and
            "logship.rejected" in agent.log_text(), f"{s} rejected={rejected}")

    # 4. Expired session token: one refresh (from the credentials file), one retry.
    G.write_credentials(creds, "token-two")
    cw.fault("expired_token", new_token="token-two")
    cid = G.container(env, app, "token")
    sname = G.stream_name("token", inst, cid)
    G.testsrv(cid, "/log?n=1000&size=120")
    s = G.wait_lines(cw, group, sname, 1000, 60)
    lines_ok("expired token: every line arrives", s, 1000)
    t.check("expired token: refused once, credentials refreshed",
            cw.stats()["errors"].get("ExpiredTokenException", 0) >= 1 and
            "cwlogs.credentials_refresh" in agent.log_text(), cw.stats()["errors"])

    # 5. Clock skew: the service's clock is 15 minutes ahead.
    cw.fault("skew", offset_s=900)
    cid = G.container(env, app, "skew")
    sname = G.stream_name("skew", inst, cid)
    G.testsrv(cid, "/log?n=1000&size=120")
    s = G.wait_lines(cw, group, sname, 1000, 60)
    lines_ok("clock skew: re-signed with the server's time, every line arrives", s, 1000)
    cw.fault("skew", offset_s=0)

    # 6. Outage: every request fails for 4 s; the agent spools, then drains in order.
    cid = G.container(env, app, "outage")
    sname = G.stream_name("outage", inst, cid)
    wait_stream(sname)
    spooled0 = G.prom(mport).get("slipway_log_events_spooled_total", 0)
    cw.fault("error500", group=group, stream=sname, seconds=4, count=1)
    G.testsrv(cid, "/log?n=1500&size=120")
    time.sleep(1)
    G.testsrv(cid, "/log?n=1500&size=120")
    s = G.wait_lines(cw, group, sname, 3000, 90)
    lines_ok("outage: every line arrives after recovery, in order", s, 3000)
    spooled = G.prom(mport).get("slipway_log_events_spooled_total", 0) - spooled0
    t.check("outage: batches went to the spool meanwhile", spooled > 0,
            f"spooled={spooled}")

    # 7. A deleted log group is created again (another app: its own group).
    app2 = "ld" + env.run
    group2 = G.PREFIX + app2
    cid = G.container(env, app2, "web")
    sname = G.stream_name("web", inst, cid)
    G.testsrv(cid, "/log?n=500&size=120")
    L.wait_for(lambda: (G.seqs(cw, group2, sname) or {}).get("distinct") == 500, 60, 0.2)
    cw.fault("delete_group", group=group2)
    G.testsrv(cid, "/log?n=500&size=120")
    s = L.wait_for(lambda: (lambda x: x if x and x["distinct"] == 500 and x["max"] == 1000
                            else None)(G.seqs(cw, group2, sname)), 60, 0.2)
    t.check("deleted group: created again, the lines after the deletion arrive",
            s and s["max"] == 1000 and s["distinct"] == 500 and s["duplicates"] == 0,
            f"{G.seqs(cw, group2, sname)}")
    t.check("deleted group: CreateLogGroup called again", cw.stats()["requests"].get(
        "CreateLogGroup", 0) >= 3, cw.stats()["requests"])

    # 8. SIGKILL of the agent in the middle of a flood, twice.
    cid = G.container(env, app, "crash")
    sname = G.stream_name("crash", inst, cid)
    wait_stream(sname)
    G.testsrv(cid, "/logflood?seconds=4&size=100")
    for _ in range(2):
        time.sleep(1.5)
        agent.kill()
        time.sleep(0.3)
        G.start_agent(agent)
    done = L.wait_for(lambda: "logflood done" in L.container_logs(cid, 1), 60, 0.2)
    total = int(L.container_logs(cid, 1).split("lines=")[1].split()[0]) if done else -1
    s = G.wait_lines(cw, group, sname, total, 180, kind="logflood")
    print(f"# crash: {total} lines written")
    lines_ok("SIGKILL x2 mid-flood: every line arrives, duplicates within one batch per "
             "crash", s, total, 2 * BATCH_MAX, ordered=False)
    t.check("SIGKILL x2: the agent said where it resumed", agent.log_text().count(
        f"container={cid[:12]}") >= 3 and "since_ns=" in agent.log_text())

    # 9. Signatures: the fake refused none except the deliberate skew.
    st = cw.stats()
    bad = {k: v for k, v in st["errors"].items() if k in (
        "MissingAuthenticationTokenException", "IncompleteSignatureException",
        "UnrecognizedClientException")}
    t.check("every request carried a valid SigV4 signature", not bad, st["errors"])
    t.check("no batch broke a limit (InvalidParameterException, SerializationException)",
            st["errors"].get("InvalidParameterException", 0) == 0 and
            st["errors"].get("SerializationException", 0) == 0, st["errors"])
    t.check("the agent is still running", agent.alive(), agent.log_text()[-2000:])
    m = G.prom(mport)
    print(f"# agent: shipped={m.get('slipway_log_events_shipped_total')} "
          f"retries={m.get('slipway_log_retries_total')} "
          f"duplicates_skipped={m.get('slipway_log_duplicates_skipped_total')} "
          f"spooled={m.get('slipway_log_events_spooled_total')}")
except Exception as e:  # noqa: BLE001
    import traceback
    traceback.print_exc()
    t.fail("unexpected error", repr(e))
finally:
    for a in env.agents:
        if os.path.exists(a.log_path):
            print("# agent log tail:")
            for line in a.log_text().splitlines()[-15:]:
                print("#   " + line[:300])
    env.close()
    cw.close()
sys.exit(t.done())
