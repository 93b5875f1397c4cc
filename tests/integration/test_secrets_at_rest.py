#!/usr/bin/env python3
"""Secrets at rest with the real slipway-coordinator: after linking an app
(fake GitLab), setting its Slack URL (fake Slack) and an environment value,
none of the GitLab token, the deploy key's private half, the webhook token,
the Slack URL or the environment value is in the SQLite files (database, WAL)
or the log in plaintext; `slipway-coordinator secrets rotate` re-seals every
cell under a new master key (the old key no longer opens them); after a
restart everything still works: the environment reads back, GitLab's webhook
token is accepted, Slack is notified, and unlink reaches GitLab with the
stored token.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coord_proc import BIN, Coordinator  # noqa: E402
from linklib import (GL_TOKEN, SECRET_OPEN, FakeGitLab, FakeSlack, deliver,  # noqa: E402
                     found_in_files, hook_of, push_payload, secret_open, store_files,
                     wait_until)
from tap import Tap  # noqa: E402

t = Tap()
ENV_VALUE = "env-SeCrEt-value-4f1c2e"
SLACK_PATH = "/services/T9/B9/slackSeCrEtPart42"


def secrets_of(co, gl, sl):
    """name -> plaintext that must never be stored or logged as it is."""
    hook = hook_of(gl)
    pem = secret_open(co, "apps", "web", "deploy_key_private") or ""
    # The key material: the base64 lines of the PEM (each a long unique run).
    lines = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
    out = {"GitLab token": GL_TOKEN, "hook token": hook["token"] if hook else "?",
           "Slack URL": sl.url(SLACK_PATH), "Slack URL path": SLACK_PATH,
           "environment value": ENV_VALUE}
    for i, ln in enumerate(lines):
        out[f"private key line {i + 1}"] = ln
    return out, pem


def check_nothing_plain(co, secrets, when, public=None):
    files = store_files(co)
    if public:
        # The scan must be able to fail: plaintext columns are found by it.
        t.check(f"{when}: the scan finds what is stored in clear (the public key)",
                found_in_files(files, public.split()[1]), public)
    hits = {name: found_in_files(files, value) for name, value in secrets.items()}
    hits = {k: v for k, v in hits.items() if v}
    t.check(f"{when}: no secret in plaintext in {sorted(os.path.basename(f) for f in files)}",
            not hits and len(files) >= 1, hits)


def main():
    gl = FakeGitLab([GL_TOKEN], [{"path": "group/web", "id": 42, "default_branch": "main"}])
    gl.start()
    sl = FakeSlack().start()
    try:
        with Coordinator(extra={"server.public_url": "https://co.example.com"}) as co:
            run(co, gl, sl)
    finally:
        gl.stop()
        sl.stop()
    return t.done()


def run(co, gl, sl):
    key = co.admin_key
    co.call("POST", "/v1/apps", body={"name": "web"}, token=key)
    st, b, _ = co.call("POST", "/v1/apps/web/link", token=key, timeout=60, body={
        "gitlab_url": gl.url, "project": "group/web", "token": GL_TOKEN})
    t.check("linked", st == 200, f"{st} {b}")
    st, b, _ = co.call("PUT", "/v1/apps/web/slack", token=key, body={"url": sl.url(SLACK_PATH)})
    t.check("Slack URL set", st == 200, f"{st} {b}")
    st, b, _ = co.call("PATCH", "/v1/apps/web/env", token=key,
                       body={"set": {"DB_PASSWORD": ENV_VALUE}})
    t.check("environment set", st == 200, f"{st} {b}")
    st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
        "services": {"web": {"image": "registry.example/web@sha256:" + "a" * 64, "port": 80}},
        "description": "with env"})
    t.check("a release carrying the environment", st == 202, f"{st} {b}")
    wait_until(lambda: sl.messages(), 10)
    secrets, pem = secrets_of(co, gl, sl)
    t.check("the sealed private key opens with the master key", pem.startswith(
        "-----BEGIN EC PRIVATE KEY-----"), pem[:40])

    # -- at rest, while running (the WAL too) and after a clean stop --
    st, raw, _ = co.call("GET", "/v1/apps/web/link", token=key)
    public = (raw.get("deploy_key") or {}).get("public", "x x")
    check_nothing_plain(co, secrets, "running")
    st2, raw2, _ = co.call("GET", "/v1/apps/web", token=key)
    st3, raw3, _ = co.call("GET", "/v1/events?limit=100", token=key)
    answers = str(raw) + str(raw2) + str(raw3)
    leaked = [k for k, v in secrets.items() if v in answers]
    t.check("no API answer carries a secret (link, app, events)", not leaked, leaked)
    co.kill(signal.SIGTERM)
    check_nothing_plain(co, secrets, "stopped", public)
    with open(co.log_path, "rb") as f:
        log = f.read().decode(errors="replace")
    leaked = [k for k, v in secrets.items() if v in log]
    t.check("the log holds none of them", not leaked, leaked)

    # -- rotation --
    key_file = os.path.join(co.data, "master.key")
    with open(key_file) as f:
        old_key = f.read()
    tmp = tempfile.mkdtemp(prefix="slipway-oldkey-")
    old_copy = os.path.join(tmp, "old.key")
    shutil.copy(key_file, old_copy)
    r = subprocess.run([BIN, "--config", co.conf, "secrets", "rotate"], capture_output=True,
                       text=True)
    m = re.search(r"re-sealed (\d+) secret", r.stdout)
    n = int(m.group(1)) if m else -1
    # hook token, deploy key, GitLab token, Slack URL, app environment, release environment
    t.check("secrets rotate re-seals every cell (>= 6)", r.returncode == 0 and n >= 6,
            r.stdout + r.stderr)
    with open(key_file) as f:
        new_key = f.read()
    t.check("the master key file changed (still 0600)", new_key != old_key
            and (os.stat(key_file).st_mode & 0o777) == 0o600, oct(os.stat(key_file).st_mode))
    t.check("the new key opens the same private key",
            secret_open(co, "apps", "web", "deploy_key_private") == pem, "differs")
    db = os.path.join(co.data, "coordinator.db")
    old = subprocess.run([SECRET_OPEN, db, old_copy, "apps", "web", "gitlab_token"],
                         capture_output=True)
    t.check("the old key opens nothing any more", old.returncode != 0, old.stdout)
    shutil.rmtree(tmp, ignore_errors=True)
    check_nothing_plain(co, secrets, "after rotation")

    # -- and the coordinator still works after a restart --
    co.restart()
    st, b, _ = co.call("GET", "/v1/apps/web/env", token=key)
    t.check("the environment reads back", st == 200
            and b.get("environment", {}).get("DB_PASSWORD") == ENV_VALUE, f"{st} {b}")
    hook = hook_of(gl)
    hook_id = hook["url"].rsplit("/", 1)[-1]
    st, b, _ = deliver(co, hook_id, hook["token"], push_payload("0" * 39 + "2",
                                                               ref="refs/heads/topic"))
    t.check("GitLab's webhook token is still accepted", st in (200, 202), f"{st} {b}")
    st, b, _ = deliver(co, hook_id, "not-the-token", push_payload("0" * 39 + "3"))
    t.check("and a wrong one still refused", st == 401, st)
    sl.control(clear=True)
    st, b, _ = co.call("POST", "/v1/apps/web/releases", token=key, body={
        "services": {"web": {"image": "registry.example/web@sha256:" + "b" * 64, "port": 80}},
        "description": "after rotation"})
    got = wait_until(lambda: sl.messages(), 15)
    t.check("Slack is still notified (the URL opens)", st == 202 and len(got) == 1
            and "is live on every instance" in got[0]["body"]["text"], f"{st} {got}")
    st, b, _ = co.call("DELETE", "/v1/apps/web/link", token=key, timeout=60)
    state = gl.control()
    t.check("unlink reaches GitLab with the stored token", st == 200
            and b["webhook_removed"] and b["deploy_key_removed"]
            and not state["keys"].get("42") and not state["hooks"].get("42"), f"{st} {b}")


if __name__ == "__main__":
    sys.exit(main())
