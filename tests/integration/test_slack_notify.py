#!/usr/bin/env python3
"""Slack notifications from the real slipway-coordinator against the fake
incoming webhook (tests/fakes/slack.py), with a protocol-speaking fake agent:

- the URL is set, shown as configured, never returned;
- a release live on every instance: one message (app, release, commit, who
  pushed, how long), delivered through 429 (after Retry-After) and 500;
- a rollout that fails and is rolled back: one message naming both releases;
- Slack down (no answer, then 500s) never holds a rollout;
- a failed build (a push whose commit cannot be fetched): one message with
  the commit and who pushed.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coord_proc import Agent, Coordinator  # noqa: E402
from linklib import (GL_TOKEN, FakeGitLab, FakeSlack, deliver, hook_of,  # noqa: E402
                     push_payload, wait_until)
from tap import Tap  # noqa: E402

t = Tap()


def services(tag):
    return {"web": {"image": "registry.example/web@sha256:" + tag * 64, "port": 8080,
                    "count": 1}}


def texts(sl):
    return [m["body"]["text"] for m in sl.messages()]


def poll_and_ack(agent, result="succeeded", reason=None, timeout=10):
    """Takes the next job and acknowledges it; the job, or None."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, b, _ = agent.poll(wait=2)
        if st == 200 and b["jobs"]:
            job = b["jobs"][0]
            extra = {"reason": reason} if reason else {}
            agent.ack(job["id"], job["lease_id"], result, **extra)
            return job
    return None


def rollout_state(co, rid):
    st, b, _ = co.call("GET", f"/v1/apps/web/rollouts/{rid}", token=co.admin_key)
    return b.get("state") if st == 200 else None


def main():
    sl = FakeSlack().start()
    gl = FakeGitLab([GL_TOKEN], [{"path": "group/web", "id": 42, "default_branch": "main",
                                  "ssh_url_to_repo": "ssh://git@127.0.0.1:1/group/web.git"}])
    gl.start()
    try:
        with Coordinator(extra={"server.public_url": "https://co.example.com"}) as co:
            run(co, sl, gl)
    finally:
        sl.stop()
        gl.stop()
    return t.done()


def run(co, sl, gl):
    key = co.admin_key
    url = sl.url("/services/T0001/B0001/sEcReTsLaCkPaRt")
    co.call("POST", "/v1/apps", body={"name": "web"}, token=key)

    # -- the URL --
    st, b, _ = co.call("PUT", "/v1/apps/web/slack", body={"url": "not a url"}, token=key)
    t.check("a malformed Slack URL is 400", st == 400, f"{st} {b}")
    st, b, _ = co.call("PUT", "/v1/apps/web/slack", body={"url": url, "x": 1}, token=key)
    t.check("an unknown field is 400", st == 400, f"{st} {b}")
    st, b, _ = co.call("PUT", "/v1/apps/nope/slack", body={"url": url}, token=key)
    t.check("an unknown app is 404", st == 404, f"{st} {b}")
    st, b, _ = co.call("PUT", "/v1/apps/web/slack", body={"url": url}, token=key)
    t.check("PUT slack: 200, configured", st == 200 and b == {"app": "web", "slack": True},
            f"{st} {b}")
    st, b, _ = co.call("GET", "/v1/apps/web/slack", token=key)
    st2, b2, _ = co.call("GET", "/v1/apps/web/link", token=key)
    st3, b3, _ = co.call("GET", "/v1/apps/web", token=key)
    t.check("GET shows it configured, nothing returns the URL",
            b == {"app": "web", "slack": True} and b2["slack"] is True
            and "sEcReT" not in str(b) + str(b2) + str(b3), f"{b} {b2} {b3}")

    # -- a release live on every instance, through 429 and 500 --
    agent = Agent(co, "i-slack-1")
    agent.register()
    sl.control(fail=[{"status": 429, "retry_after": 1}, {"status": 500}])
    st, r1, _ = co.call("POST", "/v1/apps/web/releases", token=key,
                        body={"services": services("a"), "description": "v1"})
    t.check("release 1 promoted", st == 202, f"{st} {r1}")
    job = poll_and_ack(agent)
    t.check("the agent took and acknowledged the job", job is not None, "no job")
    t.check("rollout 1 succeeded", wait_until(
        lambda: rollout_state(co, r1["rollout"]) == "succeeded", 10), rollout_state(co, r1["rollout"]))
    got = wait_until(lambda: texts(sl), 20)
    state = sl.control()
    t.check("one message: release live on every instance",
            len(got) == 1 and f"release {r1['release']} (#1) is live on every instance" in got[0]
            and "*web*" in got[0] and "took" in got[0], got)
    t.check("delivered after 429 (Retry-After) and 500: three attempts",
            state["answers"] == [429, 500, 200] and not state["invalid"], state)
    blocks = sl.messages()[0]["body"].get("blocks", [])
    fields = [f["text"] for f in blocks[1]["fields"]] if len(blocks) == 2 else []
    t.check("the message has the fields App, Release, Commit, Pushed by, Rollout took",
            any(f.startswith("*App*\nweb") for f in fields)
            and any(f.startswith("*Release*\n" + r1["release"]) for f in fields)
            and any(f.startswith("*Commit*") for f in fields)
            and any(f.startswith("*Pushed by*") for f in fields)
            and any(f.startswith("*Rollout took*") for f in fields), fields)

    # -- a rollout that fails and is rolled back --
    sl.control(clear=True)
    st, r2, _ = co.call("POST", "/v1/apps/web/releases", token=key,
                        body={"services": services("b"), "description": "v2"})
    poll_and_ack(agent, "failed", reason="container web-1 never became healthy")
    t.check("rollout 2 rolled back", wait_until(
        lambda: rollout_state(co, r2["rollout"]) == "rolled back", 10),
        rollout_state(co, r2["rollout"]))
    poll_and_ack(agent)  # the revert to release 1
    got = wait_until(lambda: texts(sl), 20)
    time.sleep(0.5)  # a second message (there must be none) would come now
    got = texts(sl)
    t.check("one message: rolled back to release 1, with the reason",
            len(got) == 1 and f"release {r2['release']} (#2) was rolled back to "
            f"{r1['release']}" in got[0] and "never became healthy" in got[0], got)

    # -- Slack down never holds a rollout --
    sl.control(clear=True, hang=2, fail=[{"status": 500, "times": 100}])
    t0 = time.time()
    st, r3, _ = co.call("POST", "/v1/apps/web/releases", token=key,
                        body={"services": services("c"), "description": "v3"})
    poll_and_ack(agent)
    ok = wait_until(lambda: rollout_state(co, r3["rollout"]) == "succeeded", 10)
    t.check("Slack hanging then failing: the rollout still succeeds at once",
            ok and time.time() - t0 < 8, f"{rollout_state(co, r3['rollout'])} "
            f"{time.time() - t0:.1f}s")
    st, b, _ = co.call("GET", "/v1/health", token=key)
    t.check("the coordinator answers while Slack hangs", st == 200, st)

    # -- a failed build --
    sl.control(clear=True)
    st, b, _ = co.call("POST", "/v1/apps/web/link", token=key, timeout=60, body={
        "gitlab_url": gl.url, "project": "group/web", "token": GL_TOKEN})
    hook = hook_of(gl)
    t.check("app linked (for pushes)", st == 200 and hook is not None, f"{st} {b}")
    hook_id = hook["url"].rsplit("/", 1)[-1] if hook else ""
    sha = "feedfacecafebeef0123456789abcdef01234567"
    st, d, _ = deliver(co, hook_id, hook["token"] if hook else "",
                       push_payload(sha, user="dora"), uuid="slack-build-1")
    t.check("the push is accepted", st == 202, f"{st} {d}")
    got = wait_until(lambda: [x for x in texts(sl) if "failed" in x], 60)
    t.check("one message: the build failed, with the commit and who pushed",
            len(got) == 1 and "*web*: build b_" in got[0] and "commit feedface by dora" in got[0],
            f"{got} {co.log_tail(20)}")
    with open(co.log_path, "rb") as f:
        log = f.read().decode(errors="replace")
    t.check("the Slack URL never reaches the log", "sEcReTsLaCkPaRt" not in log, "in the log")

    st, b, _ = co.call("DELETE", "/v1/apps/web/slack", token=key)
    t.check("DELETE slack: not configured", st == 200 and b["slack"] is False, f"{st} {b}")


if __name__ == "__main__":
    sys.exit(main())
