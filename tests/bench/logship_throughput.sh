#!/usr/bin/env bash
# The log shipper's throughput against the engine's own delivery rate.
#
# A container writes 100-byte lines as fast as it can (testsrv /logflood) for
# FLOOD_SECONDS (default 10). In the same run, a plain
#   curl -sN --unix-socket SOCK 'http://localhost/v1.41/containers/ID/logs?follow=1&stdout=1&timestamps=1&since=T'
# follows that container: its line rate is what the engine itself delivers.
# The real slipway-agent ships the same lines to the fake CloudWatch Logs
# (tests/fakes/cloudwatch.py --no-store: it verifies every signature and every
# limit but only counts the events). Printed:
#   - lines/s received by curl and lines/s accepted by the fake (target: the
#     fake >= 0.8 x curl);
#   - the agent's CPU-seconds per million lines (target <= 2), its private
#     memory (Private_Clean + Private_Dirty of smaps_rollup; target <= 16 MB),
#     peak and at the end;
#   - CPU of curl and of the fake (to show whether the fake is the bottleneck).
# Exit status 0 only when all three targets hold.
#
#   tests/bench/logship_throughput.sh [BUILD_DIR]
#
# Needs the integration environment (tests/run sets it); without it the
# harness is brought up and down here.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${SLIPWAY_BUILD:-$top/build}}
case $build in /*) ;; *) build=$top/$build ;; esac
envfile=""
if [ -z "${SLIPWAY_TEST_IMAGE:-}" ]; then
	envfile=$build/bench-logship.env
	"$top/tests/integration/harness.sh" up "$envfile" "$build" >/dev/null
	set -a
	# shellcheck disable=SC1090
	. "$envfile"
	set +a
	trap '"$top/tests/integration/harness.sh" down "$envfile" "$build" >/dev/null' EXIT
fi
export SLIPWAY_TOP=$top SLIPWAY_BUILD=$build
python3 - <<'PY'
import os, subprocess, sys, threading, time
sys.path.insert(0, os.path.join(os.environ["SLIPWAY_TOP"], "tests", "integration"))
import agentlib as L
import loglib as G

SECONDS = int(os.environ.get("FLOOD_SECONDS", "10"))
env = L.Env("lsbench")
cw = G.FakeCloudWatch(store=False)
creds = os.path.join(env.tmp, "credentials")
G.write_credentials(creds)
app = "bench" + env.run
group = G.PREFIX + app


class Follower(threading.Thread):
    """curl following the container; counts lines as they come (every log line
    ends with a newline and no 8-byte frame header of these lines holds one)."""

    def __init__(self, cmd):
        super().__init__(daemon=True)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.lines = 0
        self.first = self.last = None

    def run(self):
        f = self.proc.stdout
        while True:
            chunk = f.read1(1 << 20)
            if not chunk:
                return
            n = chunk.count(b"\n")
            if n:
                now = time.time()
                if self.first is None:
                    self.first = now
                self.last = now
                self.lines += n


ok = True
try:
    coord = env.coordinator()
    agent, mport = G.cloudwatch_agent(env, coord, cw, creds, extra={"metrics.interval": "60s"})
    G.start_agent(agent)
    agent.wait_registered()
    cid = G.container(env, app, "flood")
    sname = G.stream_name("flood", "logs-" + env.run, cid)
    L.wait_for(lambda: (cw.stream(group, sname) or {}).get("count"), 30, 0.1)
    apid = agent.proc.pid
    since = f"{time.time():.9f}"
    url = (f"http://localhost/v1.41/containers/{cid}/logs?follow=1&stdout=1&timestamps=1"
           f"&since={since}")
    cmd = ["curl", "-sN", "--unix-socket", L.DOCKER_SOCK, url]
    follower = Follower(cmd)
    follower.start()
    time.sleep(0.5)
    a_cpu0, f_cpu0 = G.proc_cpu_s(apid), G.proc_cpu_s(cw.proc.pid)
    c_cpu0 = G.proc_cpu_s(follower.proc.pid)
    lines0 = G.prom(mport).get("slipway_log_lines_read_total", 0)
    count0 = cw.stream(group, sname)["count"]
    G.testsrv(cid, f"/logflood?seconds={SECONDS}&size=100")
    peak = 0.0
    deadline = time.time() + SECONDS + 180
    total = None
    while time.time() < deadline:
        peak = max(peak, G.private_mb(apid))
        if total is None and "logflood done" in L.container_logs(cid, 1):
            total = int(L.container_logs(cid, 1).split("lines=")[1].split()[0])
        st = cw.stream(group, sname)
        if total is not None and follower.lines >= total + 1 and \
                st["count"] - count0 >= total + 1:
            break
        time.sleep(0.25)
    a_cpu = G.proc_cpu_s(apid) - a_cpu0
    f_cpu = G.proc_cpu_s(cw.proc.pid) - f_cpu0
    c_cpu = G.proc_cpu_s(follower.proc.pid) - c_cpu0
    lines = G.prom(mport).get("slipway_log_lines_read_total", 0) - lines0
    end_mb = G.private_mb(apid)
    batches = [b for b in cw.call("GET", "/_fake/batches?" + __import__("urllib.parse").parse
                                  .urlencode({"group": group, "stream": sname}))["batches"]]
    flood = [b for b in batches if b[0] >= follower.first - 1] if follower.first else []
    got = sum(n for _, n in flood)
    # The fake's rate: events of the flood over the time from the first batch that
    # carried them to the last (the first batch's own events count from its arrival).
    if len(flood) >= 2:
        fake_rate = (got - flood[0][1]) / (flood[-1][0] - flood[0][0])
    else:
        fake_rate = 0.0
    follower.lines -= 1  # the "done" line
    curl_rate = follower.lines / (follower.last - follower.first) if follower.last and \
        follower.last > follower.first else 0.0
    follower.proc.terminate()
    m = G.prom(mport)
    print(f"command (engine rate): {' '.join(cmd)}")
    print(f"flood: testsrv /logflood?seconds={SECONDS}&size=100 wrote {total} lines")
    print(f"curl: {follower.lines} lines in {follower.last - follower.first:.2f} s = "
          f"{curl_rate:,.0f} lines/s (curl CPU {c_cpu:.2f} s)")
    print(f"fake CloudWatch: {got} events in {len(flood)} PutLogEvents over "
          f"{flood[-1][0] - flood[0][0]:.2f} s = {fake_rate:,.0f} lines/s "
          f"(fake CPU {f_cpu:.2f} s)" if flood else "fake CloudWatch: nothing")
    ratio = fake_rate / curl_rate if curl_rate else 0
    print(f"ratio fake/curl: {ratio:.2f} (target >= 0.8)")
    per_m = a_cpu / lines * 1e6 if lines else float("inf")
    print(f"agent CPU: {a_cpu:.2f} s for {int(lines)} lines read = {per_m:.2f} CPU-s per million "
          f"lines (target <= 2)")
    print(f"agent private memory: peak {peak:.1f} MB, at the end {end_mb:.1f} MB "
          f"(target <= 16 MB)")
    print(f"agent counters: shipped={m.get('slipway_log_events_shipped_total', 0):.0f} "
          f"spooled={m.get('slipway_log_events_spooled_total', 0):.0f} "
          f"pauses={m.get('slipway_log_pauses_total', 0):.0f} "
          f"batches={m.get('slipway_log_batches_sent_total', 0):.0f}")
    ok = ratio >= 0.8 and per_m <= 2 and peak <= 16 and got >= (total or 1)
    if got < (total or 1):
        print(f"MISSING: the fake has {got} of {total} flood lines")
finally:
    env.close()
    cw.close()
sys.exit(0 if ok else 1)
PY
