#!/usr/bin/env python3
"""A clean stop of the real slipway-coordinator after it has used every module
that holds something until shutdown: a GitLab link (fake GitLab), a Slack URL
(fake Slack, which gets the failed build's message), a promoted release, an
uploaded build (it fails: no Docker here), a build log read, and a log follow
stream still open when SIGTERM arrives.

- the follow stream ends with a complete answer;
- the process exits 0, link_free and slack_free ran (the notifier logs what
  it sent when it stops), and its output has no sanitizer report.

Run it against the ASan build for the leak check that matters (LeakSanitizer
fails the exit status and prints its report on any leak):
    SLIPWAY_BUILD=build/asan python3 tests/integration/test_coordinator_shutdown.py
(`make BUILD=build/asan SAN="-fsanitize=address,undefined" OPT="-O1 -g"
build/asan/slipway-coordinator` builds it.) With the everyday build it checks
the exit status and the stream.
"""
import http.client
import io
import os
import signal
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coord_proc import Coordinator  # noqa: E402
from linklib import GL_TOKEN, FakeGitLab, FakeSlack, wait_until  # noqa: E402
from tap import Tap  # noqa: E402

t = Tap()
SANITIZER_MARKS = ("LeakSanitizer", "AddressSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer")


def context_tar():
    """A tiny build context: slipway.yml and a Dockerfile."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in (("slipway.yml", "services:\n  web:\n    build: .\n"),
                           ("Dockerfile", "FROM scratch\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main():
    sl = FakeSlack().start()
    gl = FakeGitLab([GL_TOKEN], [{"path": "group/web", "id": 42, "default_branch": "main",
                                  "ssh_url_to_repo": "ssh://git@127.0.0.1:1/group/web.git"}])
    gl.start()
    co = Coordinator(extra={"server.public_url": "https://co.example.com"})
    try:
        co.start()
        co.admin_key = co.apikey()
        run(co, sl, gl)
    finally:
        if co.proc and co.proc.poll() is None:
            co.kill(signal.SIGKILL)
        os.system("rm -rf " + co.tmp)
        gl.stop()
        sl.stop()
    return t.done()


def run(co, sl, gl):
    key = co.admin_key
    st, _, _ = co.call("POST", "/v1/apps", body={"name": "web"}, token=key)
    t.check("app created", st == 201, st)
    st, b, _ = co.call("POST", "/v1/apps/web/link", token=key, timeout=60, body={
        "gitlab_url": gl.url, "project": "group/web", "token": GL_TOKEN})
    t.check("linked to the fake GitLab", st == 200 and b.get("linked") is True, f"{st} {b}")
    st, b, _ = co.call("PUT", "/v1/apps/web/slack", body={"url": sl.url()}, token=key)
    t.check("Slack URL set", st == 200 and b == {"app": "web", "slack": True}, f"{st} {b}")
    st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
        "services": {"web": {"image": "registry.example/web@sha256:" + "a" * 64,
                             "port": 8080}}})
    t.check("a release from images, promoted", st == 202 and b["rollout"].startswith("ro_"),
            f"{st} {b}")
    st, b, _ = co.call("POST", "/v1/apps/web/builds?description=shutdown", token=key,
                       raw=context_tar(), headers={"Content-Type": "application/gzip"})
    t.check("an upload is accepted", st == 202 and b["build"].startswith("b_"), f"{st} {b}")
    build = b.get("build", "")

    def build_ended():
        s, bb, _ = co.call("GET", f"/v1/builds/{build}", token=key)
        return bb if s == 200 and bb["status"] in ("complete", "failed") else None
    ended = wait_until(build_ended, 60)
    t.check("the build ends (failed: no Docker here)",
            ended and ended["status"] == "failed", ended)
    t.check("Slack got the failed build",
            wait_until(lambda: any(build in m["body"]["text"] for m in sl.messages()), 20),
            sl.messages())
    st, text, _ = co.call("GET", f"/v1/builds/{build}/log", token=key)
    t.check("its log reads", st == 200 and isinstance(text, str) and text, f"{st} {text!r}")

    # A follow stream stays open across the SIGTERM.
    conn = http.client.HTTPConnection("127.0.0.1", co.port, timeout=30)
    conn.request("GET", "/v1/apps/web/logs?follow=1",
                 headers={"Authorization": "Bearer " + key, "Slipway-Protocol": "1"})
    resp = conn.getresponse()
    t.check("the follow stream opens", resp.status == 200, resp.status)
    time.sleep(0.3)  # let it poll once: it is a live stream when the signal comes
    co.proc.send_signal(signal.SIGTERM)
    try:
        rest = resp.read()  # ends when the coordinator ends the stream
        complete = True
    except (http.client.IncompleteRead, ConnectionError) as e:
        rest, complete = repr(e), False
    conn.close()
    t.check("SIGTERM ends the follow stream with a complete answer", complete, rest)
    try:
        rc = co.proc.wait(timeout=30)
    except Exception:  # noqa: BLE001
        rc = None
    out = co.log_tail(400)
    marks = [m for m in SANITIZER_MARKS if m in out]
    t.check("the coordinator exits 0", rc == 0, f"exit {rc}\n{out[-3000:]}")
    t.check("no sanitizer report (leaks, memory errors, undefined behaviour)", not marks,
            f"{marks}\n{out[-6000:]}")
    t.check("it logged its stop", "coordinator.stopped" in out, out[-2000:])
    # link_free ran (it stops the Slack notifier, which counts what it sent).
    t.check("the link module and the Slack notifier were freed at the stop",
            "slack.stopped sent=" in out, out[-2000:])


if __name__ == "__main__":
    sys.exit(main())
