#!/usr/bin/env python3
"""`slipway run` and the manifest's release command through the REAL
coordinator, the REAL agent and the harness's Docker engine: a one-off
container of a release's service runs the given command with the service's
environment; its output comes back through the log sink (stdout to stdout,
stderr to stderr) and its exit status is the CLI's (0 and non-zero); the
run's document tells the same; a run past its timeout is killed; the
container is removed afterwards and never served traffic. A release whose
release command exits 0 rolls out after it; one whose command fails stops
before any deploy job: the rollout and the release are failed with the
reason and the previous release keeps serving, with no failed request."""
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import agentlib as L  # noqa: E402
from coord_proc import BOOT, BUILD, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
SLIPWAY = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(L.TOP, BUILD), "slipway")
t = Tap()
env = L.Env("run")
# Our own app name: agents of tests running at the same time manage every
# container of their app that carries the run's test label.
APP = "rt-" + env.run


class CoordForAgent:
    def __init__(self, co):
        self.co = co
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = BOOT

    def agents(self):
        st, b, _ = self.co.call("GET", "/v1/agents", token=self.co.admin_key)
        return b["agents"] if st == 200 else []


def get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def svc(image, rel, listen):
    return {"web": {"image": image, "port": 8080, "environment": {"RELEASE": rel},
                    "proxy": {"listen": listen, "hosts": [], "protocol": "http"},
                    "health": {"type": "http", "path": "/health", "interval_ms": 100,
                               "timeout_ms": 1000, "grace_ms": 8000},
                    "count": 1, "stop_grace_ms": 2000}}


class Run:
    def __init__(self, p):
        self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr

    def __repr__(self):
        return f"exit {self.rc}\n--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-2000:]}"

    def run_id(self):
        for word in self.err.split():
            if word.startswith("run-"):
                return word
        return None


try:
    with Coordinator(extra={"queue.lease": "30s"}) as co:
        key = co.admin_key
        cenv = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        cenv.update({"SLIPWAY_HOST": f"http://127.0.0.1:{co.port}", "SLIPWAY_API_KEY": key,
                     "HOME": env.tmp})

        def sw(*args, timeout=120):
            return Run(subprocess.run([SLIPWAY, *args], env=cenv, capture_output=True,
                                      text=True, timeout=timeout))

        def rollout_end(rid, timeout=90):
            def ended():
                st, b, _ = co.call("GET", f"/v1/apps/{APP}/rollouts/{rid}", token=key)
                return b if st == 200 and b["state"] != "running" else None
            return L.wait_for(ended, timeout, 0.2) or {}

        def run_doc(rid):
            st, b, _ = co.call("GET", f"/v1/apps/{APP}/runs/{rid}", token=key)
            return b if st == 200 else {}

        def run_containers(rid):
            return L.containers([L.LABEL, f"slipway.run={rid}"])

        agent = env.agent(CoordForAgent(co), instance="run").start()
        t.check("the real agent registers", agent.wait_registered(30), agent.log_text()[-2000:])
        listen = L.free_port()
        co.call("POST", "/v1/apps", token=key, body={"name": APP})
        st, b, _ = co.call("POST", f"/v1/apps/{APP}/releases", token=key,
                           body={"services": svc(L.IMAGE_V1, "r1", listen)})
        ro = rollout_end(b.get("rollout"))
        t.check("release r1 rolls out and serves",
                ro.get("state") == "succeeded" and "hello from r1" in get(listen),
                (ro, agent.log_text()[-3000:]))

        # ---- output and exit status pass through ----
        r = sw("run", APP, "web", "--", "/bin/sh", "-c",
               "echo out-one; echo err-one >&2; echo out-two release=$RELEASE")
        t.check("run exits 0 when the command does", r.rc == 0, r)
        t.check("its stdout comes back on stdout, in order, with the service's environment",
                "out-one\nout-two release=r1\n" in r.out, r)
        rid0 = r.run_id()
        st, logs, _ = co.call("GET", f"/v1/apps/{APP}/logs?service={rid0}", token=key)
        err_ev = [e for e in logs.get("events", []) if e.get("message") == "err-one"]
        on_stderr = bool(err_ev) and err_ev[0].get("stream") == "stderr"
        t.check("each line is printed on the stream the log sink recorded for it",
                bool(err_ev) and ("err-one" in r.err) == on_stderr and
                ("err-one" in r.out) != on_stderr, (r, err_ev))
        doc = run_doc(rid0)
        t.check("the run is recorded as succeeded with exit code 0 on the agent",
                doc.get("state") == "succeeded" and doc.get("exit_code") == 0 and
                doc.get("kind") == "run" and doc.get("agent"), doc)
        t.check("the run's container is removed afterwards",
                L.wait_for(lambda: not run_containers(rid0), 15, 0.2), run_containers(rid0))

        r = sw("run", APP, "web", "--", "/bin/sh", "-c", "echo about-to-fail; exit 7")
        t.check("a non-zero exit status is the CLI's exit status", r.rc == 7, r)
        t.check("with the output before it", "about-to-fail" in r.out, r)
        rid1 = r.run_id()
        doc = run_doc(rid1)
        t.check("the run document says failed, exit code 7, and keeps the last output",
                doc.get("state") == "failed" and doc.get("exit_code") == 7 and
                "about-to-fail" in (doc.get("output_tail") or ""), doc)
        t.check("that container is removed too",
                L.wait_for(lambda: not run_containers(rid1), 15, 0.2), run_containers(rid1))

        r = sw("run", APP, "web", "--json", "--", "/bin/sh", "-c", "exit 3")
        t.check("--json prints the run's final document and keeps the exit status",
                r.rc == 3 and '"exit_code": 3' in r.out, r)

        r = sw("run", APP, "web", "--timeout", "2s", "--", "/bin/sh", "-c",
               "echo sleeping; sleep 60")
        t.check("a run past its timeout is killed and fails", r.rc != 0 and r.rc != 2, r)
        doc = run_doc(r.run_id())
        t.check("its reason says it timed out", "timed out" in (doc.get("reason") or ""), doc)

        r = sw("run", APP, "nosuch", "--", "true")
        t.check("an unknown service is refused (exit 1, nothing runs)",
                r.rc == 1 and "no service nosuch" in r.err, r)
        r = sw("run", APP)
        t.check("a missing service is a usage error (exit 2)", r.rc == 2, r)

        st, b, _ = co.call("GET", f"/v1/apps/{APP}/runs", token=key)
        t.check("GET /v1/apps/APP/runs lists the runs newest first",
                st == 200 and len(b.get("runs", [])) >= 4 and b["runs"][-1]["id"] == rid0, b)

        # ---- the manifest's release command ----
        poller = L.Poller(listen)
        poller.start()
        time.sleep(0.3)
        st, b, _ = co.call("POST", f"/v1/apps/{APP}/releases", token=key, body={
            "services": svc(L.IMAGE_V2, "r2", listen),
            "release": ["/bin/sh", "-c", "echo migrating; sleep 1; echo migrated"]})
        r2, ro2 = b.get("release"), b.get("rollout")
        st, mid, _ = co.call("GET", f"/v1/apps/{APP}/rollouts/{ro2}", token=key)
        ro = rollout_end(ro2)
        t.check("a release whose release command exits 0 rolls out after it",
                ro.get("state") == "succeeded" and len(ro.get("jobs", [])) == 1, (b, ro))
        t.check("and serves", L.wait_for(lambda: "hello from r2" in get(listen), 10),
                get(listen))
        st, b, _ = co.call("GET", f"/v1/apps/{APP}/runs?limit=1", token=key)
        rel_run = (b.get("runs") or [{}])[0]
        t.check("the release command ran once as a run of kind release, before the deploy",
                rel_run.get("kind") == "release" and rel_run.get("state") == "succeeded" and
                rel_run.get("rollout") == ro2 and rel_run.get("release") == r2 and
                "migrated" in (rel_run.get("output_tail") or "") and
                rel_run.get("ended_ms", 0) <= min([j.get("created_ms", 1 << 62)
                                                   for j in ro.get("jobs", [])] or [1 << 62]),
                (rel_run, ro))

        st, b, _ = co.call("POST", f"/v1/apps/{APP}/releases", token=key, body={
            "services": svc(L.IMAGE_V1, "r3", listen),
            "release": ["/bin/sh", "-c", "echo migration broke >&2; exit 3"]})
        r3, ro3 = b.get("release"), b.get("rollout")
        ro = rollout_end(ro3)
        t.check("a release command that fails stops the rollout: failed, with the reason",
                ro.get("state") == "failed" and "exited with status 3" in (ro.get("reason") or "")
                and not ro.get("jobs"), ro)
        st, rel, _ = co.call("GET", f"/v1/apps/{APP}/releases/{r3}", token=key)
        st2, app, _ = co.call("GET", f"/v1/apps/{APP}", token=key)
        t.check("the release is failed and the app keeps r2",
                rel.get("status") == "failed" and app.get("release") == r2, (rel, app))
        time.sleep(1)
        t.check("the old release keeps serving", "hello from r2" in get(listen), get(listen))
        poller.stop()
        t.check(f"no request failed meanwhile ({poller.total} requests)",
                poller.total > 0 and not poller.failures,
                (poller.failures[:5], [ln for ln in agent.log_text().splitlines()
                                       if "swap." in ln or "runjob." in ln or "proxy" in ln][-60:]))
        st, b, _ = co.call("GET", f"/v1/events?app={APP}&limit=200", token=key)
        kinds = [e["kind"] for e in b.get("events", [])]
        t.check("events tell the runs' story", "run.started" in kinds and "run.failed" in kinds
                and "run.succeeded" in kinds, kinds)
        mine = [c for c in L.containers([L.LABEL, "slipway.run"])
                if any(n.lstrip("/").startswith("sw" + env.run) for n in c.get("Names", []))]
        t.check("no run container is left", L.wait_for(
            lambda: not [c for c in L.containers([L.LABEL, "slipway.run"])
                         if any(n.lstrip("/").startswith("sw" + env.run)
                                for n in c.get("Names", []))], 15, 0.2), mine)
finally:
    env.close()
sys.exit(t.done())
