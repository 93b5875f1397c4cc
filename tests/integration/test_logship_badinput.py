#!/usr/bin/env python3
"""The log shipper against bad input, with the real agent and the fake
CloudWatch Logs: binary output (invalid UTF-8, NUL bytes), a 10 MiB line
without a newline, containers that print nothing for a long while (the agent
must not spin: its CPU is measured over a quiet period), a container that
lives for a moment only, and 200 containers at once (bounded memory,
nothing crashes, every line arrives).

What Docker itself holds is the reference: its own log of each container is
read back raw and compared with what reached the fake, so nothing is lost
that the limits allow to keep.
"""
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
import loglib as G  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
EVENT_MAX = 1048576 - 26
MANY = int(os.environ.get("LOGSHIP_MANY", "200"))
t = Tap(11)
env = L.Env("logbad")
cw = G.FakeCloudWatch()
creds = os.path.join(env.tmp, "credentials")
G.write_credentials(creds)
app = "lb" + env.run
group = G.PREFIX + app
inst = "logs-" + env.run


def docker_output(cid):
    """The container's stdout+stderr as Docker keeps it: raw bytes per stream."""
    c = L.UnixHTTPConnection(L.DOCKER_SOCK, 60)
    c.request("GET", f"/v1.41/containers/{cid}/logs?stdout=1&stderr=1")
    raw = c.getresponse().read()
    c.close()
    out = {1: bytearray(), 2: bytearray()}
    i = 0
    while i + 8 <= len(raw):
        n = int.from_bytes(raw[i + 4:i + 8], "big")
        out[raw[i]] += raw[i + 8:i + 8 + n]
        i += 8 + n
    return out


def expected_events(data):
    """Lines as the shipper must deliver them: repaired UTF-8, NUL as U+FFFD,
    empty lines dropped, lines over 1 MiB - 26 bytes cut."""
    evs = []
    for line in bytes(data).split(b"\n"):
        text = line.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        raw = text.encode("utf-8")
        while len(raw) > EVENT_MAX:
            cut = EVENT_MAX
            while raw[cut] & 0xC0 == 0x80:
                cut -= 1
            evs.append(raw[:cut].decode())
            raw = raw[cut:]
        if raw:
            evs.append(raw.decode())
    return evs


def wait_events(stream, n, timeout):
    return L.wait_for(lambda: (lambda e: e if len(e) >= n else None)(cw.events(group, stream)),
                      timeout, 0.3) or cw.events(group, stream)


try:
    coord = env.coordinator()
    agent, mport = G.cloudwatch_agent(env, coord, cw, creds, extra={"logs.memory_max": "16M"})
    G.start_agent(agent)
    agent.wait_registered()
    pid = agent.proc.pid

    # 1. Binary output: random bytes (invalid UTF-8, NULs, control characters).
    cid = G.container(env, app, "binary", cmd=["sh", "-c",
                      "busybox head -c 400000 /dev/urandom; echo; echo after-binary; "
                      "exec sleep 3600"])
    sname = G.stream_name("binary", inst, cid)
    time.sleep(1)
    want = expected_events(docker_output(cid)[1])
    got = [e["message"] for e in wait_events(sname, len(want), 60)]
    t.check(f"binary output: all {len(want)} lines arrive, repaired (U+FFFD), in order",
            got == want, f"got {len(got)} events, want {len(want)}; first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)}")
    m = G.prom(mport)
    t.check("binary output: replacements counted, the fake refused nothing",
            m.get("slipway_log_utf8_replaced_total", 0) > 1000 and
            cw.stats()["errors"].get("SerializationException", 0) == 0,
            f"{m.get('slipway_log_utf8_replaced_total')} {cw.stats()['errors']}")

    # 2. A 10 MiB line without a newline, from a container that exits at once.
    cid = G.container(env, app, "bigline", cmd=["sh", "-c",
                      "busybox head -c 10485760 /dev/zero | busybox tr '\\000' a"])
    sname = G.stream_name("bigline", inst, cid)
    got = wait_events(sname, 11, 120)
    sizes = [len(e["message"]) for e in got]
    t.check("10 MiB line: cut into 11 events of at most 1 MiB - 26 bytes, none lost",
            len(got) == 11 and sum(sizes) == 10485760 and max(sizes) <= EVENT_MAX and
            all(set(e["message"]) == {"a"} for e in got), f"sizes={sizes}")
    t.check("10 MiB line: one timestamp for all its events, in order",
            len({e["timestamp"] for e in got}) == 1, [e["timestamp"] for e in got])

    # 3. Quiet containers: no CPU spent while nothing happens, and they still work.
    quiet = [G.container(env, app, f"quiet{i}") for i in range(3)]
    for q in quiet:
        L.wait_for(lambda: (cw.stream(group, G.stream_name(f"quiet{quiet.index(q)}", inst, q))
                            or {}).get("count"), 30, 0.2)
    time.sleep(2)
    c0 = G.proc_cpu_s(pid)
    time.sleep(20)
    idle_cpu = G.proc_cpu_s(pid) - c0
    print(f"# idle: {idle_cpu:.3f} CPU-seconds in 20 s with {len(quiet) + 1} quiet followed "
          "containers")
    t.check("quiet containers: the agent sleeps (< 0.3 CPU-s in 20 s)", idle_cpu < 0.3,
            f"{idle_cpu:.3f}")
    G.testsrv(quiet[0], "/log?n=50&size=80")
    s = G.wait_lines(cw, group, G.stream_name("quiet0", inst, quiet[0]), 50, 30)
    t.check("quiet containers: a line after the silence still arrives",
            s and s["distinct"] == 50 and s["missing"] == 0, s)

    # 4. A container that lives for a moment only.
    cid = G.container(env, app, "blink", cmd=["sh", "-c", "echo blink seq=1; echo blink seq=2"])
    sname = G.stream_name("blink", inst, cid)
    s = L.wait_for(lambda: (lambda x: x if x and x["distinct"] == 2 else None)(
        G.seqs(cw, group, sname, "seq")), 30, 0.2)
    t.check("a container that exits at once: its lines arrive", s, G.seqs(cw, group, sname, "seq"))
    t.check("a container that exited: read to its end (what logs_drained waits for)",
            L.wait_for(lambda: f"logship.eof container={cid[:12]}" in agent.log_text(), 10, 0.2),
            agent.log_text()[-1500:])

    # 5. Many containers at once.
    script = ("i=1; while [ $i -le 100 ]; do echo \"burst seq=$i $(busybox printf '%0100d' 0)\";"
              " i=$((i+1)); done; exec sleep 3600")
    peak = [0.0]
    t0 = time.time()

    def make(i):
        return G.container(env, app, f"many{i}", cmd=["sh", "-c", script])

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        futs = [ex.submit(make, i) for i in range(MANY)]
        while not all(f.done() for f in futs):
            peak[0] = max(peak[0], G.private_mb(pid))
            time.sleep(0.2)
        many = [f.result() for f in futs]
    print(f"# {MANY} containers created in {time.time() - t0:.1f} s")

    def all_arrived():
        peak[0] = max(peak[0], G.private_mb(pid))
        done = 0
        for st in cw.streams():
            if st["group"] == group and st["stream"].startswith("many"):
                x = st["seqs"].get("seq")
                done += bool(x and x["distinct"] == 100 and x["missing"] == 0)
        return done if done == MANY else None
    n = L.wait_for(all_arrived, 240, 1.0)
    print(f"# {MANY} containers: all lines in {time.time() - t0:.1f} s; agent private memory "
          f"peak {peak[0]:.1f} MB")
    t.check(f"{MANY} containers: every line of every container arrives", n == MANY,
            f"complete streams: {all_arrived() or 'fewer'}")
    t.check(f"{MANY} containers: bounded memory (private < 64 MB, peak {peak[0]:.1f} MB)",
            0 < peak[0] < 64, f"{peak[0]}")
    m = G.prom(mport)
    t.check(f"{MANY} containers: all followed at once, the agent is alive",
            agent.alive() and m.get("slipway_log_following", 0) >= MANY,
            f"following={m.get('slipway_log_following')}")
    for c in many:
        G.remove_container(c)
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
