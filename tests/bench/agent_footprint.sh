#!/usr/bin/env bash
# The agent's footprint: private memory (Private_Clean + Private_Dirty from
# /proc/PID/smaps_rollup) of the agent and of the proxy process it spawned,
# while they manage 20 containers (4 apps x 5, each behind its own proxy port)
# under wrk load, after 3 rounds of swaps. Target: <= 8 MB for both together.
#
#   tests/bench/agent_footprint.sh [BUILD_DIR] [--agent BIN] [--tls [--small-ca]]
#
#   --agent BIN  the agent binary to measure (default BUILD_DIR/slipway-agent),
#                e.g. the static one: build/cross/x86_64/slipway-agent
#   --tls        every call the agent makes leaves over TLS: the coordinator
#                sits behind tests/fakes/tls_front.py with a test CA, and when
#                the agent can ship logs to CloudWatch Logs (cloudwatch.endpoint
#                in its --help) they go to tests/fakes/cloudwatch.py behind a
#                second front, while the apps log 1,600 lines/s. The agent
#                verifies with a CA file holding the machine's whole bundle plus
#                the test CA, so the cost of a real bundle is counted.
#   --small-ca   with --tls: the CA file holds the test CA alone (as when
#                coordinator.ca_file / cloudwatch.ca_file name a file with just
#                the roots the agent needs).
#
# Needs the integration environment (tests/run sets it); without it the
# harness is brought up and down here.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SLIPWAY_BUILD:-$top/build}
agent_bin=""
tls=0
small_ca=0
while [ $# -gt 0 ]; do
	case $1 in
	--agent) agent_bin=${2:?--agent needs a path}; shift 2 ;;
	--tls) tls=1; shift ;;
	--small-ca) small_ca=1; shift ;;
	-*) echo "usage: $0 [BUILD_DIR] [--agent BIN] [--tls [--small-ca]]" >&2; exit 2 ;;
	*) build=$1; shift ;;
	esac
done
case $build in /*) ;; *) build=$top/$build ;; esac
agent_bin=${agent_bin:-$build/slipway-agent}
case $agent_bin in /*) ;; *) agent_bin=$PWD/$agent_bin ;; esac
[ -x "$agent_bin" ] || { echo "agent_footprint: no agent at $agent_bin" >&2; exit 1; }
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
export SLIPWAY_AGENT_BIN=$agent_bin FOOTPRINT_TLS=$tls FOOTPRINT_SMALL_CA=$small_ca
export SLIPWAY_TOP=$top SLIPWAY_BUILD=$build
python3 - <<'PY'
import json, os, subprocess, sys, threading, time, urllib.request
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


TLS = os.environ.get("FOOTPRINT_TLS") == "1"
SMALL_CA = os.environ.get("FOOTPRINT_SMALL_CA") == "1"
FAKES = os.path.join(os.environ["SLIPWAY_TOP"], "tests", "fakes")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOG_LINES, LOG_SIZE, LOG_EVERY_S = 20, 120, 0.05  # per app: 400 lines/s


def tcp_connections(pid):
    """Established TCP sockets of a process (its fds against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                n += cols[3] == "01" and cols[9] in inodes  # 01: ESTABLISHED
    return n


def start_port(cmd, log):
    """Starts a fake that prints its port on its first line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    return proc, int(proc.stdout.readline())


def test_ca(d):
    """A test CA and a certificate for localhost signed by it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    f = {k: os.path.join(d, k) for k in ("ca.pem", "ca.key", "srv.pem", "srv.key", "srv.csr",
                                         "srv.ext")}
    with open(f["srv.ext"], "w") as out:
        out.write("subjectAltName=DNS:localhost\n")
    for cmd in (["req", "-x509", *ec, "-days", "2", "-subj", "/CN=slipway footprint CA",
                 "-keyout", f["ca.key"], "-out", f["ca.pem"]],
                ["req", *ec, "-subj", "/CN=localhost", "-keyout", f["srv.key"],
                 "-out", f["srv.csr"]],
                ["x509", "-req", "-in", f["srv.csr"], "-CA", f["ca.pem"], "-CAkey", f["ca.key"],
                 "-CAcreateserial", "-days", "2", "-extfile", f["srv.ext"], "-out", f["srv.pem"]]):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return f["ca.pem"], f["srv.pem"], f["srv.key"]


class Logger(threading.Thread):
    """Asks every app for LOG_LINES lines of LOG_SIZE bytes every LOG_EVERY_S."""

    def __init__(self, ports):
        super().__init__(daemon=True)
        self.ports, self.stop, self.lines = ports, False, 0

    def run(self):
        while not self.stop:
            for port in self.ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/log?n={LOG_LINES}"
                                                f"&size={LOG_SIZE}", timeout=5) as r:
                        if r.status == 200:
                            self.lines += LOG_LINES
                except OSError:
                    pass
            time.sleep(LOG_EVERY_S)


env = L.Env("footprint")
procs, cw_url, logger = [], None, None
fakes_log = open(os.path.join(env.tmp, "fakes.log"), "w")
try:
    coord = env.coordinator(lease_s=10)
    extra, agent_env, included = {}, {}, "coordinator over plain HTTP"
    if TLS:
        ca, cert, key = test_ca(env.tmp)
        bundle = os.path.join(env.tmp, "bundle.pem")
        with open(bundle, "w") as out:
            if os.path.exists(SYSTEM_BUNDLE) and not SMALL_CA:
                with open(SYSTEM_BUNDLE) as sysb:
                    out.write(sysb.read())
            with open(ca) as c:
                out.write(c.read())
        with open(bundle) as b:
            ncerts = b.read().count("BEGIN CERTIFICATE")

        def front(port):
            proc, fport = start_port([sys.executable, os.path.join(FAKES, "tls_front.py"),
                                      "--cert", cert, "--key", key, "--to", str(port)], fakes_log)
            procs.append(proc)
            return f"https://localhost:{fport}"
        extra = {"coordinator.url": front(coord.port), "coordinator.ca_file": bundle}
        included = f"coordinator over HTTPS (CA file of {ncerts} certificates)"
        usage = subprocess.run([L.AGENT, "--help"], capture_output=True, text=True).stdout
        if "cloudwatch.endpoint" in usage:
            proc, cw_port = start_port([sys.executable, os.path.join(FAKES, "cloudwatch.py"),
                                        "--no-store"], fakes_log)
            procs.append(proc)
            cw_url = f"http://127.0.0.1:{cw_port}"
            extra.update({"cloudwatch.region": "us-east-1", "cloudwatch.endpoint": front(cw_port),
                          "cloudwatch.ca_file": bundle})
            agent_env = {"AWS_ACCESS_KEY_ID": "AKIDFAKECLOUDWATCH",
                         "AWS_SECRET_ACCESS_KEY": "fake-secret-key-for-tests"}
            included += "; container logs to CloudWatch Logs over HTTPS"
        else:
            included += "; this agent cannot ship logs to CloudWatch Logs yet"
    print(f"agent: {L.AGENT}")
    print(f"included: {included}")
    agent = env.agent(coord, extra=extra).start(agent_env)
    assert agent.wait_registered(), "the agent did not register"
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
    if cw_url:
        logger = Logger(list(ports.values()))
        logger.start()
    time.sleep(10)  # under load, after inventory rounds and stats
    apid, ppid = agent.proc.pid, agent.proxy_pid()
    a, p = private_kb(apid), private_kb(ppid)
    conns = tcp_connections(apid)
    results = [w.result() for w in wrks]
    errors = sum(r["non2xx"] + r["socket_errors"] for r in results)
    reqs = sum(r["requests"] for r in results)
    pa = a["Private_Clean"] + a["Private_Dirty"]
    pp = p["Private_Clean"] + p["Private_Dirty"]
    print(f"containers managed: {len(running)} running ({len(env.mine())} in all), "
          f"{APPS} apps, {ROUNDS} releases each")
    print(f"load: {reqs} requests through the proxy during the measurement, {errors} errors")
    shipped_ok = True
    if logger:
        logger.stop = True
        logger.join(10)
        with urllib.request.urlopen(cw_url + "/_fake/stats", timeout=10) as r:
            stats = json.loads(r.read())
        print(f"logs: the apps wrote {logger.lines} lines of {LOG_SIZE} bytes in all; the fake "
              f"CloudWatch Logs accepted {stats['accepted']} events over TLS, rejected "
              f"{stats['rejected']}, requests {json.dumps(stats['requests'])}, "
              f"errors {json.dumps(stats['errors'])}")
        shipped_ok = stats["accepted"] > 0
    print(f"agent: {conns} TCP connections open at the measurement")
    print(f"agent pid {apid}: Private_Clean {a['Private_Clean']} kB + Private_Dirty "
          f"{a['Private_Dirty']} kB = {pa} kB (Rss {a['Rss']} kB, Pss {a['Pss']} kB)")
    print(f"proxy pid {ppid}: Private_Clean {p['Private_Clean']} kB + Private_Dirty "
          f"{p['Private_Dirty']} kB = {pp} kB (Rss {p['Rss']} kB, Pss {p['Pss']} kB)")
    total = pa + pp
    print(f"footprint: {total} kB = {total / 1024:.2f} MiB (target <= 8 MiB)")
    sys.exit(0 if total <= 8 * 1024 and len(running) == APPS * PER_APP and errors == 0
             and shipped_ok else 1)
finally:
    if logger:
        logger.stop = True
    env.close()
    for proc in procs:
        proc.terminate()
        proc.wait(5)
    fakes_log.close()
PY
