#!/usr/bin/env python3
"""SIGKILL the real coordinator during rollouts, restart it on the same port,
and check that nothing is lost: simulated agents with a journal (job ids and
per-app generations, as docs/protocol.md asks of the real agent) keep polling
through the crashes. At the end every rollout is in a definite state, every
job is done, every agent runs its apps' current generation, no acknowledged
job was ever handed out again, and no agent got two jobs for one generation.
"""
import os
import random
import signal
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from coord_proc import Agent, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

N_AGENTS = 16
CRASHES = 5
t = Tap()
random.seed(int(os.environ.get("SLIPWAY_TEST_SEED", "5")))


class SimAgent(threading.Thread):
    def __init__(self, co, n):
        super().__init__(daemon=True)
        self.a = Agent(co, f"i-restart-{n:02d}")
        self.stop = False
        self.applied = {}         # job id -> result (the journal)
        self.highest = {}         # app -> generation applied or being applied
        self.release = {}         # app -> release running
        self.acked_ok = set()     # job ids whose ack got 200
        self.redelivered_after_ack = []
        self.reregistered = 0
        self.errors = 0
        self.lock = threading.Lock()

    def call(self, fn, *args, **kw):
        """Retries transport errors (the coordinator is down) like the real agent."""
        while not self.stop:
            try:
                st, b, _ = fn(*args, **kw)
            except OSError:
                self.errors += 1
                time.sleep(0.1)
                continue
            if st == 401:  # token refused: enrol again
                self.reregistered += 1
                self.a.register()
                continue
            if st >= 500:
                time.sleep(0.1)
                continue
            return st, b
        return None, None

    def run(self):
        while not self.stop:
            try:
                st, b = self.a.register()
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        last_hb = 0
        while not self.stop:
            if time.time() - last_hb > 1:
                last_hb = time.time()
                apps = [{"app": k, "generation": v, "release": self.release.get(k),
                         "state": "running"} for k, v in self.highest.items()]
                self.call(self.a.call, "POST", "heartbeat", body={"apps": apps})
            st, b = self.call(self.a.poll, wait=1, timeout=10)
            if st != 200:
                continue
            for job in b["jobs"]:
                self.handle(job)

    def handle(self, job):
        jid, app, gen = job["id"], job["app"], job["generation"]
        if jid in self.acked_ok:
            self.redelivered_after_ack.append(jid)
        if jid in self.applied:
            result = self.applied[jid]  # recognised from the journal: never applied again
        elif gen <= self.highest.get(app, 0):
            result = "superseded"
            self.applied[jid] = result
        else:
            self.highest[app] = gen
            self.applied[jid] = "applying"
            time.sleep(random.uniform(0.05, 0.6))  # the swap
            image = job["release"]["services"][0]["image"]
            result = "failed" if image.endswith(":bad") else "succeeded"
            if result == "succeeded":
                self.release[app] = job["release"]["id"]
            self.applied[jid] = result
        st, b = self.call(self.a.ack, jid, job["lease_id"], result)
        if st == 200:
            self.acked_ok.add(jid)


def promote(co, app, image):
    while True:
        try:
            st, b, _ = co.call("POST", f"/v1/apps/{app}/releases", token=co.admin_key, body={
                "services": {"web": {"image": image, "port": 8080}}})
            return st, b
        except OSError:
            time.sleep(0.1)


with Coordinator(extra={"queue.lease": "3s", "agents.lost_after": "60s"}) as co:
    key = co.admin_key
    for app, strategy in (("web", "all"), ("api", "one-at-a-time"), ("shop", "canary")):
        st, b, _ = co.call("POST", "/v1/apps", token=key, body={"name": app, "strategy": strategy})
        assert st == 201, (st, b)
    agents = [SimAgent(co, n) for n in range(N_AGENTS)]
    for a in agents:
        a.start()
    deadline = time.time() + 20
    while time.time() < deadline and sum(1 for a in agents if a.a.id) < N_AGENTS:
        time.sleep(0.05)
    t.check("the simulated agents registered", all(a.a.id for a in agents))

    kills = 0
    images = ["v1", "v2", "bad", "v3", "v4"]
    for i in range(CRASHES):
        for app in ("web", "api", "shop"):
            st, b = promote(co, app, f"registry.local:5000/{app}:{images[i % len(images)]}")
            if st not in (201, 202):
                t.fail(f"promote {app}", (st, b))
        time.sleep(random.uniform(0.3, 1.2))  # mid-rollout
        co.kill(signal.SIGKILL)
        kills += 1
        time.sleep(0.2)
        co.restart()
    t.check(f"the coordinator was killed with SIGKILL {kills} times during rollouts", kills == CRASHES)

    # Let everything settle: every rollout ends.
    def rollouts():
        out = []
        for app in ("web", "api", "shop"):
            st, b, _ = co.call("GET", f"/v1/apps/{app}/rollouts?limit=1000", token=key)
            out += b["rollouts"]
        return out

    deadline = time.time() + 90
    while time.time() < deadline:
        rs = rollouts()
        if rs and all(r["state"] != "running" for r in rs):
            break
        time.sleep(0.25)
    rs = rollouts()
    states = sorted({r["state"] for r in rs})
    t.check("every rollout ended in a definite state", all(
        r["state"] in ("succeeded", "failed", "rolled back", "superseded") for r in rs),
        [(r["id"], r["state"]) for r in rs if r["state"] == "running"])
    t.check("the failing release was rolled back (and reverts ran)",
            any(r["state"] == "rolled back" for r in rs)
            and any(r["trigger"] == "revert" for r in rs), states)

    # Agents converge on every app's current generation.
    deadline = time.time() + 30
    apps = {}
    while time.time() < deadline:
        apps = {}
        for app in ("web", "api", "shop"):
            st, b, _ = co.call("GET", f"/v1/apps/{app}", token=key)
            apps[app] = b["generation"]
        if all(a.highest.get(app) == g for a in agents for app, g in apps.items()):
            break
        time.sleep(0.25)
    lagging = [(a.a.id, app, a.highest.get(app), g) for a in agents for app, g in apps.items()
               if a.highest.get(app) != g]
    t.check("every agent runs every app's current generation", not lagging, lagging)

    for a in agents:
        a.stop = True
    for a in agents:
        a.join(timeout=15)
    again = [j for a in agents for j in a.redelivered_after_ack]
    t.check("no job was handed out again after its ack was answered 200", not again, again)
    t.check("no agent had to register again after a restart (tokens survive)",
            sum(a.reregistered for a in agents) == 0,
            [a.reregistered for a in agents])
    t.check("the agents did see the coordinator go away", sum(a.errors for a in agents) > 0)

    db = sqlite3.connect(os.path.join(co.data, "coordinator.db"))
    dup = db.execute("SELECT agent, app, generation, count(*) FROM jobs WHERE type = 'deploy' "
                     "GROUP BY agent, app, generation HAVING count(*) > 1").fetchall()
    t.check("no agent got two jobs for the same generation of an app", not dup, dup)
    open_jobs = db.execute("SELECT id, state FROM jobs WHERE state != 'done'").fetchall()
    t.check("every job is done", not open_jobs, open_jobs)
    expired = db.execute("SELECT count(*) FROM jobs WHERE result = 'expired'").fetchone()[0]
    t.check("no job ran out of lease attempts", expired == 0, expired)
    active = db.execute("SELECT app, count(*) FROM releases WHERE status = 'active' "
                        "GROUP BY app").fetchall()
    t.check("each app has exactly one active release",
            sorted(active) == [("api", 1), ("shop", 1), ("web", 1)], active)
    db.close()

t.plan(t.n)
sys.exit(t.done())
