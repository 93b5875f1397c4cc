#!/usr/bin/env python3
"""Upgrading the agent itself under load, without systemd.

The layout of an instance (init/systemd): the proxy runs as its own process
(proxy.spawn = false, as the slipway-proxy@ units run it) and the agent as
another, both from an "installed" binary. A release serves through the proxy
under wrk load while init/upgrade-agent.sh --no-systemd installs a new binary
(a copy at a new path), restarts the deployer from it (an --agent-restart
command doing what `systemctl restart` does: SIGTERM, start, wait for
READY=1) and hands the proxy over to a new proxy process of it. Expected:
0 failed requests, 0 socket errors, the old processes exit 0, the new ones
run the new file, and the upgraded pair deploys the next release.

Each process gets its own NOTIFY_SOCKET (an abstract datagram socket this
test binds, as systemd would), which checks the sd_notify wiring end to end:
READY=1 once serving, WATCHDOG=1 from the loops, STOPPING=1 on SIGTERM and on
hand-over.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import agentlib as L  # noqa: E402
from tap import Tap  # noqa: E402

UPGRADE = os.path.join(L.TOP, "init", "upgrade-agent.sh")


class Notify(threading.Thread):
    """The systemd side of sd_notify: an abstract datagram socket and the
    messages received on it; ready_file is created at READY=1."""

    def __init__(self, env, name):
        super().__init__(daemon=True)
        self.name_ = f"slipway-test-{env.run}-{name}"
        self.addr = "@" + self.name_
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name_)
        self.sock.settimeout(0.2)
        self.messages = []
        self.ready_file = os.path.join(env.tmp, f"ready-{name}")
        self.ready = threading.Event()
        self.stop_flag = False
        self.start()

    def run(self):
        while not self.stop_flag:
            try:
                data = self.sock.recv(8192).decode(errors="replace")
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.time(), data))
            if "READY=1" in data.split("\n"):
                open(self.ready_file, "w").close()
                self.ready.set()

    def has(self, line):
        return [m for _, m in self.messages if line in m.split("\n")]

    def status(self):
        s = [ln[7:] for _, m in self.messages for ln in m.split("\n") if ln.startswith("STATUS=")]
        return s[-1] if s else None

    def close(self):
        self.stop_flag = True
        self.join(2)
        self.sock.close()


def get(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return r.status, r.read().decode(), r.getheader("X-Release")


class Slow(threading.Thread):
    """One request that takes 3 s, sent just before the hand-over: the old
    proxy must finish it before it exits."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.result = None
        self.start()

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            c.request("GET", "/slow?ms=3000")
            r = c.getresponse()
            self.result = (r.status, r.read().decode())
            c.close()
        except (OSError, http.client.HTTPException) as e:
            self.result = (0, repr(e))


def write_restart(path, pidfile, binary, agent, notify):
    """What `systemctl restart slipway-agent` does for a Type=notify unit:
    SIGTERM, wait for the exit, start, return at READY=1."""
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
set -e
old=$(cat {pidfile})
kill -TERM "$old"
while [ -r /proc/$old/stat ] && [ "$(sed -E 's/^.*\\) (.).*/\\1/' /proc/$old/stat)" != Z ]; do
	sleep 0.05
done
NOTIFY_SOCKET={notify.addr} WATCHDOG_USEC=1000000 setsid {binary} --config {agent.config} \\
	</dev/null >>{agent.log_path} 2>&1 &
echo $! >{pidfile}
i=0
while [ ! -e {notify.ready_file} ]; do
	i=$((i + 1))
	[ $i -lt 600 ] || {{ echo "the new agent never said READY=1" >&2; exit 1; }}
	sleep 0.05
done
""")


def exe_inode(pid):
    try:
        st = os.stat(f"/proc/{pid}/exe")
        return st.st_ino, os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None, None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


L.require_env()
t = Tap(32)
env = L.Env("upgrade")
notifies = []
started_pids = []
try:
    # ---- the instance: an installed binary, the proxy and the agent from it ----
    inst_dir = os.path.join(env.tmp, "usr-local-bin")
    os.makedirs(inst_dir)
    inst_bin = os.path.join(inst_dir, "slipway-agent")
    shutil.copy2(L.AGENT, inst_bin)
    old_inode = os.stat(inst_bin).st_ino
    coord = env.coordinator(lease_s=10, heartbeat_s=1)
    agent = env.agent(coord, extra={"proxy.spawn": "false", "logs.enabled": "false",
                                    "metrics.enabled": "false", "proxy.stop_timeout": "20s"})
    n_p1, n_a1 = Notify(env, "proxy1"), Notify(env, "agent1")
    n_a2, n_p2 = Notify(env, "agent2"), Notify(env, "proxy2")
    notifies = [n_p1, n_a1, n_a2, n_p2]
    plog = open(os.path.join(env.tmp, "proxy.log"), "a")
    wd = {"WATCHDOG_USEC": "1000000"}  # pings every 0.5 s
    proxy1 = subprocess.Popen([inst_bin, "proxy", "--config", agent.config], stdout=plog,
                              stderr=plog, start_new_session=True,
                              env=dict(os.environ, NOTIFY_SOCKET=n_p1.addr, **wd))
    t.check("proxy (its own process, as its unit runs it) says READY=1",
            n_p1.ready.wait(15) and "serving 0 routes" in (n_p1.status() or ""),
            json.dumps(n_p1.messages))
    agent.log = open(agent.log_path, "a")
    agent.proc = subprocess.Popen([inst_bin, "--config", agent.config], stdout=agent.log,
                                  stderr=agent.log, start_new_session=True,
                                  env=dict(os.environ, NOTIFY_SOCKET=n_a1.addr, **wd))
    t.check("agent says READY=1 once the proxy answers",
            n_a1.ready.wait(20) and n_a1.has("STATUS=running; the proxy answers"),
            json.dumps(n_a1.messages) + agent.log_text()[-1500:])
    reg = agent.wait_registered()
    t.check("agent registers; STATUS says so", reg and L.wait_for(
        lambda: n_a1.status() == "running; registered with the coordinator", 5),
        json.dumps(n_a1.messages))

    port = L.free_port()
    rel1 = L.release("r1", "web", [L.service(image=L.IMAGE_V1, env={"RELEASE": "v1"},
                                             listen=port, count=2)])
    j1 = coord.desired("web", 1, rel1)[0]
    res = coord.wait_result(j1, 90)
    t.check("v1 deployed", res and res["result"] == "succeeded", json.dumps(res))
    st, body, rel = get(port)
    t.check("v1 serves through the proxy", st == 200 and rel == "v1", f"{st} {body!r} {rel}")
    before = sorted(c["Id"] for c in env.mine() if c["State"] == "running")
    t.check("watchdog pings arrive from both loops (WATCHDOG_USEC=1 s: every 0.5 s)",
            L.wait_for(lambda: len(n_p1.has("WATCHDOG=1")) >= 3 and
                       len(n_a1.has("WATCHDOG=1")) >= 3, 5),
            f"proxy {len(n_p1.has('WATCHDOG=1'))}, agent {len(n_a1.has('WATCHDOG=1'))}")

    # ---- the upgrade under load ----
    new_dir = os.path.join(env.tmp, "new")
    os.makedirs(new_dir)
    new_bin = os.path.join(new_dir, "slipway-agent")
    # "The new build", at a new path: the same program with a marker appended
    # (the ELF loader ignores trailing bytes), so the files can be told apart.
    marker = f"\n# slipway upgrade test {env.run}\n".encode()
    with open(L.AGENT, "rb") as src, open(new_bin, "wb") as dst:
        dst.write(src.read() + marker)
    os.chmod(new_bin, 0o755)
    pidfile = os.path.join(env.tmp, "agent.pid")
    with open(pidfile, "w") as f:
        f.write(str(agent.proc.pid))
    restart = os.path.join(env.tmp, "restart-agent.sh")
    write_restart(restart, pidfile, inst_bin, agent, n_a2)
    wrk = L.Wrk(env, port, 120, connections=64)
    pollers = [L.Poller(port) for _ in range(4)]
    for p in pollers:
        p.start()
    time.sleep(2.0)  # load runs before the upgrade starts
    old_agent_pid, old_proxy_pid = agent.proc.pid, proxy1.pid
    slow = [Slow(port) for _ in range(3)]
    time.sleep(0.3)  # the slow requests reach the containers through the old proxy
    t0 = time.time()
    up = subprocess.run(["bash", UPGRADE, "--no-systemd", "--bin", inst_bin,
                         "--config", agent.config, "--agent-restart", f"sh {restart}",
                         "--proxy-log", os.path.join(env.tmp, "proxy-new.log"),
                         "--timeout", "60", new_bin],
                        env=dict(os.environ, NOTIFY_SOCKET=n_p2.addr), capture_output=True,
                        text=True, timeout=300)
    upgrade_s = time.time() - t0
    new_agent_pid = int(open(pidfile).read())
    started_pids.append(new_agent_pid)
    _, hp = agent.control("GET", "/v1/health")
    new_proxy_pid = hp.get("pid") if isinstance(hp, dict) else None
    if new_proxy_pid:
        started_pids.append(new_proxy_pid)
    time.sleep(2.0)  # load continues on the new pair
    wrk.interrupt()
    r = wrk.result()
    for p in pollers:
        p.stop()
    failures = [f for p in pollers for f in p.failures]
    polled = sum(p.total for p in pollers)
    print(f"# upgrade under load: script {upgrade_s:.1f} s; wrk (64 connections): "
          f"{r['requests']} requests, non-2xx {r['non2xx']}, socket errors "
          f"{r['socket_errors']}; keep-alive pollers: {polled} requests, "
          f"{len(failures)} failed", flush=True)
    for line in up.stdout.splitlines():
        print("#   " + line, flush=True)

    t.check("upgrade-agent.sh --no-systemd: install, agent, proxy: exit 0", up.returncode == 0,
            up.stdout + up.stderr + agent.log_text()[-2000:])
    t.check("wrk across the upgrade: 0 non-2xx, 0 socket errors",
            r["requests"] > 1000 and r["non2xx"] == 0 and r["socket_errors"] == 0, r["text"])
    t.check("keep-alive clients across the upgrade: 0 failed requests",
            polled > 100 and not failures, json.dumps(failures[:10]))
    for sl in slow:
        sl.join(30)
    t.check("3 requests of 3 s in flight at the hand-over completed through the old proxy",
            all(sl.result == (200, "slow ms=3000\n") for sl in slow),
            json.dumps([sl.result for sl in slow]))
    t.check("only v1 answered (the upgrade changed no release)",
            set(r["releases"]) == {"v1"}, json.dumps(r["releases"]))
    with open(inst_bin, "rb") as a, open(inst_bin + ".previous", "rb") as prev, \
            open(L.AGENT, "rb") as orig:
        installed, previous, original = a.read(), prev.read(), orig.read()
    t.check("the new binary is installed (a new file), the old one kept as .previous",
            installed == original + marker and os.stat(inst_bin).st_ino != old_inode and
            previous == original, up.stdout)

    # ---- the processes ----
    t.check("the old agent exited 0 on SIGTERM", agent.proc.wait(10) == 0,
            agent.log_text()[-2000:])
    try:
        proxy1_rc = proxy1.wait(30)
    except subprocess.TimeoutExpired:
        proxy1_rc = None
    t.check("the old proxy drained and exited 0 after the hand-over", proxy1_rc == 0,
            f"exit {proxy1_rc}")
    cur = os.stat(inst_bin).st_ino
    a_ino, a_path = exe_inode(new_agent_pid)
    p_ino, p_path = exe_inode(new_proxy_pid) if new_proxy_pid else (None, None)
    t.check("the new agent runs the new file", alive(new_agent_pid) and a_ino == cur,
            f"pid {new_agent_pid} exe {a_path}")
    t.check("the new proxy (a new process) runs the new file and answers on the control socket",
            new_proxy_pid not in (None, old_proxy_pid) and alive(new_proxy_pid) and p_ino == cur,
            f"pid {new_proxy_pid} exe {p_path}")
    after = sorted(c["Id"] for c in env.mine() if c["State"] == "running")
    t.check("the restart redeployed nothing (same containers run)", after == before,
            json.dumps([before, after]))

    # ---- sd_notify along the way ----
    t.check("old agent: STOPPING=1 on SIGTERM", n_a1.has("STOPPING=1"), json.dumps(n_a1.messages))
    t.check("new agent: READY=1 with the proxy answering, then watchdog pings",
            n_a2.has("READY=1") and n_a2.has("STATUS=running; the proxy answers") and
            L.wait_for(lambda: len(n_a2.has("WATCHDOG=1")) >= 2, 5),
            json.dumps(n_a2.messages))
    t.check("old proxy: STOPPING=1 at the hand-over", n_p1.has("STOPPING=1"),
            json.dumps(n_p1.messages[-5:]))
    ready_p2 = [m for m in n_p2.messages if "READY=1" in m[1].split("\n")]
    t.check("new proxy: READY=1 once it took the sockets over",
            ready_p2 and "taken over from the previous proxy" in ready_p2[0][1] and
            "serving 1 routes" in ready_p2[0][1], json.dumps(n_p2.messages))
    t.check("the new proxy's environment named no watchdog: it sends none",
            not n_p2.has("WATCHDOG=1"), json.dumps(n_p2.messages))
    t.check("the old proxy's log: hand-over sent, stopped, exited idle",
            "proxy.handover_sent" in open(plog.name).read() and
            "proxy.exit idle=true" in open(plog.name).read(), open(plog.name).read()[-2000:])

    # ---- the upgraded pair does its work ----
    rel2 = L.release("r2", "web", [L.service(image=L.IMAGE_V2, env={"RELEASE": "v2"},
                                             listen=port, count=2)])
    w2 = L.Wrk(env, port, 6, connections=32)
    time.sleep(1.0)
    j2 = coord.desired("web", 2, rel2)[0]
    res = coord.wait_result(j2, 90)
    r2 = w2.result()
    t.check("the new agent and proxy swap to v2", res and res["result"] == "succeeded" and
            get(port)[2] == "v2", json.dumps(res))
    t.check("that swap: 0 non-2xx, 0 socket errors",
            r2["requests"] > 100 and r2["non2xx"] == 0 and r2["socket_errors"] == 0, r2["text"])

    # ---- the systemd path of the script, with a stand-in systemctl ----
    # Slot a runs (is-active), so the script must start slot b, whose
    # "start" returns at the new proxy's READY=1 as Type=notify does, then
    # move `enable` to b. The agent restart goes through the same helper.
    n_a3, n_p3 = Notify(env, "agent3"), Notify(env, "proxy3")
    notifies += [n_a3, n_p3]
    restart3 = os.path.join(env.tmp, "restart-agent3.sh")
    write_restart(restart3, pidfile, inst_bin, agent, n_a3)
    fakebin = os.path.join(env.tmp, "fakebin")
    os.makedirs(fakebin)
    calls = os.path.join(env.tmp, "systemctl.calls")
    ppid3 = os.path.join(env.tmp, "proxy3.pid")
    with open(os.path.join(fakebin, "systemctl"), "w") as f:
        f.write(f"""#!/bin/sh
echo "$*" >>{calls}
case "$*" in
"is-active --quiet slipway-proxy@a.service" | "is-active --quiet slipway-agent.service") exit 0 ;;
"is-active --quiet "*) exit 3 ;;
"restart slipway-agent.service") exec sh {restart3} ;;
"start slipway-proxy@b.service")
	NOTIFY_SOCKET={n_p3.addr} setsid {inst_bin} proxy --config {agent.config} \\
		</dev/null >>{env.tmp}/proxy3.log 2>&1 &
	echo $! >{ppid3}
	i=0
	while [ ! -e {n_p3.ready_file} ]; do
		i=$((i + 1)); [ $i -lt 600 ] || exit 1; sleep 0.05
	done ;;
"show -p MainPID --value slipway-proxy@b.service") cat {ppid3} ;;
"enable --quiet "* | "disable --quiet "*) ;;
*) echo "unexpected: $*" >&2; exit 1 ;;
esac
""")
    os.chmod(os.path.join(fakebin, "systemctl"), 0o755)
    new2 = os.path.join(env.tmp, "new2-slipway-agent")
    with open(new_bin, "rb") as src, open(new2, "wb") as dst:
        dst.write(src.read() + b"# second upgrade\n")
    os.chmod(new2, 0o755)
    _, h = agent.control("GET", "/v1/health")
    proxy2_pid = h.get("pid") if isinstance(h, dict) else None
    w3 = L.Wrk(env, port, 60, connections=64)
    time.sleep(1.0)
    us = subprocess.run(["bash", UPGRADE, "--bin", inst_bin, "--config", agent.config, new2],
                        env=dict(os.environ, PATH=fakebin + ":" + os.environ["PATH"]),
                        capture_output=True, text=True, timeout=300)
    started_pids.append(int(open(pidfile).read()))
    p3 = int(open(ppid3).read()) if os.path.exists(ppid3) else None
    if p3:
        started_pids.append(p3)
    time.sleep(1.0)
    w3.interrupt()
    r3 = w3.result()
    sent = open(calls).read().splitlines() if os.path.exists(calls) else []
    print(f"# systemd path (stand-in systemctl): wrk {r3['requests']} requests, non-2xx "
          f"{r3['non2xx']}, socket errors {r3['socket_errors']}", flush=True)
    for line in us.stdout.splitlines():
        print("#   " + line, flush=True)
    t.check("systemd path: restart the agent, start slot b, enable b, disable a; exit 0",
            us.returncode == 0 and "restart slipway-agent.service" in sent and
            "start slipway-proxy@b.service" in sent and
            "enable --quiet slipway-proxy@b.service" in sent and
            "disable --quiet slipway-proxy@a.service" in sent and
            sent.index("restart slipway-agent.service") <
            sent.index("start slipway-proxy@b.service"),
            us.stdout + us.stderr + "\n".join(sent))
    t.check("systemd path: slot b's process serves the control socket, the previous proxy "
            "exited", p3 and agent.proxy_pid() == p3 and proxy2_pid and not alive(proxy2_pid),
            f"slot b {p3}, answering {agent.proxy_pid()}, previous {proxy2_pid}")
    t.check("systemd path under load: 0 non-2xx, 0 socket errors",
            r3["requests"] > 1000 and r3["non2xx"] == 0 and r3["socket_errors"] == 0,
            r3["text"])

    # ---- failures and rollback ----
    with open(inst_bin, "rb") as a:
        current = a.read()
    bad = os.path.join(env.tmp, "bad-agent")
    with open(bad, "w") as f:
        f.write("#!/bin/sh\nexit 3\n")
    os.chmod(bad, 0o755)
    ub = subprocess.run(["bash", UPGRADE, "--no-systemd", "--bin", inst_bin, "--config",
                         agent.config, "--steps", "install", bad], capture_output=True, text=True)
    with open(inst_bin, "rb") as a:
        same = a.read() == current
    t.check("a binary that fails its selftest is refused; the installed one stays",
            ub.returncode != 0 and "selftest" in ub.stderr and same, ub.stdout + ub.stderr)
    badcfg = os.path.join(env.tmp, "bad.conf")
    with open(badcfg, "w") as f:
        f.write(open(agent.config).read() + 'colour = "blue"\n')
    ub = subprocess.run(["bash", UPGRADE, "--no-systemd", "--bin", inst_bin, "--config", badcfg,
                         "--steps", "install", new_bin], capture_output=True, text=True)
    t.check("a configuration the new binary refuses stops the upgrade before it installs",
            ub.returncode != 0 and "colour" in ub.stderr, ub.stdout + ub.stderr)
    ur = subprocess.run(["bash", UPGRADE, "--no-systemd", "--bin", inst_bin, "--config",
                         agent.config, "--steps", "install", "--rollback"],
                        capture_output=True, text=True)
    with open(inst_bin, "rb") as a:
        back = a.read() == original + marker  # the binary before the second upgrade
    t.check("--rollback --steps install puts the previous binary back", ur.returncode == 0 and back,
            ur.stdout + ur.stderr)
    t.check("no error in the agents' log", " error " not in agent.log_text(),
            "\n".join(x for x in agent.log_text().splitlines() if " error " in x)[:2000])
finally:
    for pid in started_pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    try:
        proxy1.kill()
        proxy1.wait(5)
    except Exception:  # noqa: BLE001 (not started, or gone)
        pass
    for n in notifies:
        n.close()
    env.close()
sys.exit(t.done())
