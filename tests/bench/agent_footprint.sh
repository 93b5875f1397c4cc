#!/usr/bin/env bash
# The agent's footprint: private memory (Private_Clean + Private_Dirty from
# /proc/PID/smaps_rollup) of the agent and of the proxy process it spawned,
# while they manage 20 containers (4 apps x 5, each behind its own proxy port)
# under wrk load, after 3 rounds of swaps. Target: <= 8 MB for both together.
#
#   tests/bench/agent_footprint.sh
#
# Needs the integration environment (tests/run sets it); without it the
# harness is brought up and down here.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SLIPWAY_BUILD:-$top/build}
envfile=""
if [ -z "${SLIPWAY_TEST_IMAGE:-}" ]; then
	envfile=$build/bench-footprint.env
	"$top/tests/integration/harness.sh" up "$envfile" "$build" >/dev/null
	set -a
	# shellcheck disable=SC1090
	. "$envfile"
	set +a
	trap '"$top/tests/integration/harness.sh" down "$envfile" "$build" >/dev/null' EXIT
fi
export SLIPWAY_TOP=$top SLIPWAY_BUILD=$build
python3 - <<'PY'
import json, os, sys, time
sys.path.insert(0, os.path.join(os.environ["SLIPWAY_TOP"], "tests", "integration"))
import agentlib as L

APPS, PER_APP, ROUNDS = 4, 5, 3


def private_kb(pid):
    kb = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Private_Clean:", "Private_Dirty:", "Rss:", "Pss:"):
                kb[parts[0][:-1]] = int(parts[1])
    return kb


env = L.Env("footprint")
try:
    coord = env.coordinator(lease_s=10)
    agent = env.agent(coord).start()
    agent.wait_registered()
    ports = {f"app{i}": L.free_port() for i in range(APPS)}

    def rel(app, n):
        return L.release(f"{app}-r{n}", app, [L.service(
            image=L.IMAGE_V1 if n % 2 else L.IMAGE_V2, env={"RELEASE": f"r{n}"},
            listen=ports[app], count=PER_APP)])
    for n in range(1, ROUNDS + 1):
        jobs = [coord.desired(app, n, rel(app, n))[0] for app in ports]
        for j in jobs:
            res = coord.wait_result(j, 180)
            assert res and res["result"] == "succeeded", res
    running = [c for c in env.mine() if c["State"] == "running"]
    wrks = [L.Wrk(env, p, 20, connections=16, threads=1) for p in ports.values()]
    time.sleep(10)  # under load, after inventory rounds and stats
    apid, ppid = agent.proc.pid, agent.proxy_pid()
    a, p = private_kb(apid), private_kb(ppid)
    results = [w.result() for w in wrks]
    errors = sum(r["non2xx"] + r["socket_errors"] for r in results)
    reqs = sum(r["requests"] for r in results)
    pa = a["Private_Clean"] + a["Private_Dirty"]
    pp = p["Private_Clean"] + p["Private_Dirty"]
    print(f"containers managed: {len(running)} running ({len(env.mine())} in all), "
          f"{APPS} apps, {ROUNDS} releases each")
    print(f"load: {reqs} requests through the proxy during the measurement, {errors} errors")
    print(f"agent pid {apid}: Private_Clean {a['Private_Clean']} kB + Private_Dirty "
          f"{a['Private_Dirty']} kB = {pa} kB (Rss {a['Rss']} kB, Pss {a['Pss']} kB)")
    print(f"proxy pid {ppid}: Private_Clean {p['Private_Clean']} kB + Private_Dirty "
          f"{p['Private_Dirty']} kB = {pp} kB (Rss {p['Rss']} kB, Pss {p['Pss']} kB)")
    total = pa + pp
    print(f"footprint: {total} kB = {total / 1024:.2f} MiB (target <= 8 MiB)")
    sys.exit(0 if total <= 8 * 1024 and len(running) == APPS * PER_APP and errors == 0 else 1)
finally:
    env.close()
PY
