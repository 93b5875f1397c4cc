#!/usr/bin/env python3
"""Linking an app to GitLab with the real slipway-coordinator against the fake
GitLab API (tests/fakes/gitlab.py), and the deploy key it made against a real
sshd and git:

- link: the fake checks PRIVATE-TOKEN, the URL-encoded path and every body
  (types, can_push false, enable_ssl_verification true): no violations; the
  key is read-only, the hook points at <public_url>/hooks/gitlab/<id>;
- the webhook token GitLab got is the one the coordinator checks;
- the deploy key registered at GitLab is accepted by a real sshd for a real
  `git clone` through GIT_SSH_COMMAND with only that key (another key is not);
- linking twice is harmless; every GitLab error (401, 403, 404, 409, 422,
  429 exhausted and retried, 500 exhausted and retried, unreachable) is a
  clear API error and leaves nothing at GitLab and nothing in the store;
- unlink removes the hook and the key, clears the columns; --force.
"""
import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coord_proc import Coordinator  # noqa: E402
from linklib import (GL_TOKEN, FakeGitLab, SshGit, deliver, hook_of, push_payload,  # noqa: E402
                     secret_open, wait_until)
from tap import Tap  # noqa: E402

PUBLIC = "https://coordinator.example.com"
t = Tap()


def app_row(co, app="web"):
    db = sqlite3.connect(os.path.join(co.data, "coordinator.db"), timeout=10)
    db.row_factory = sqlite3.Row
    try:
        r = db.execute("SELECT * FROM apps WHERE name = ?", (app,)).fetchone()
        return dict(r) if r else None
    finally:
        db.close()


LINK_COLUMNS = ("hook_id", "hook_token", "deploy_key_public", "deploy_key_private",
                "gitlab_url", "gitlab_token", "gitlab_hook_id", "gitlab_key_id")


def nothing_linked(co):
    row = app_row(co)
    return row is not None and all(row[c] is None for c in LINK_COLUMNS)


def main():
    ssh = SshGit().start()
    gl = FakeGitLab([GL_TOKEN], [
        {"path": "group/web", "id": 42, "default_branch": "main", "ssh_url_to_repo": ssh.url()},
        {"path": "group/other", "id": 43}]).start()
    try:
        with Coordinator(extra={"server.public_url": PUBLIC}) as co:
            run(co, gl, ssh)
    finally:
        gl.stop()
        ssh.stop()
    return t.done()


def link(co, project="group/web", token=GL_TOKEN, url=None, **extra):
    body = {"gitlab_url": url or gl_url, "project": project, "token": token}
    body.update(extra)
    return co.call("POST", "/v1/apps/web/link", body=body, token=co.admin_key, timeout=120)


def run(co, gl, ssh):
    global gl_url
    gl_url = gl.url
    key = co.admin_key
    st, _, _ = co.call("POST", "/v1/apps", body={"name": "web"}, token=key)
    t.check("app created", st == 201, st)

    # -- a first link --
    st, b, _ = link(co, deploy="branch")
    t.check("link answers 200", st == 200, f"{st} {b}")
    state = gl.control()
    t.check("the fake saw no violation (token header, encoded path, bodies)",
            not state["violations"], state["violations"])
    paths = [r["path"] for r in state["requests"]]
    t.check("the project was read by its URL-encoded path",
            "/api/v4/projects/group%2Fweb" in paths, paths)
    keys = state["keys"].get("42", [])
    hook = hook_of(gl)
    t.check("one read-only deploy key at GitLab", len(keys) == 1 and keys[0]["can_push"] is False,
            keys)
    row = app_row(co)
    want_url = f"{PUBLIC}/hooks/gitlab/{row['hook_id']}"
    t.check("one webhook to <public_url>/hooks/gitlab/<hook id>",
            hook is not None and hook["url"] == want_url, hook)
    t.check("webhook: push events, branch filter, SSL verification",
            hook and hook["push_events"] is True and hook["enable_ssl_verification"] is True
            and hook["push_events_branch_filter"] == "main" and hook["tag_push_events"] is False,
            hook)
    t.check("answer: repo_url is the project's ssh_url_to_repo",
            b and b.get("repo_url") == ssh.url() and row["repo_url"] == ssh.url(), b)
    t.check("answer: the public key GitLab got, its fingerprint",
            b and b["deploy_key"]["public"].split()[:2] == keys[0]["key"].split()[:2]
            and b["deploy_key"]["fingerprint"].startswith("SHA256:"), b)
    text = str(b)
    t.check("the answer holds neither token nor private key nor hook id",
            GL_TOKEN not in text and "PRIVATE KEY" not in text and row["hook_id"] not in text
            and hook["token"] not in text, text)

    # -- the hook token GitLab got is the one the coordinator checks --
    st, _, _ = deliver(co, row["hook_id"], "wrong-token", push_payload(ssh.sha))
    t.check("a delivery with a wrong token is 401", st == 401, st)
    st, d, _ = deliver(co, row["hook_id"], hook["token"],
                       push_payload("0" * 39 + "1", ref="refs/heads/other"))
    t.check("a delivery with GitLab's token is accepted", st in (200, 202), f"{st} {d}")

    # -- the deploy key at a real sshd --
    pem = secret_open(co, "apps", "web", "deploy_key_private")
    t.check("the stored private key opens (sealed, PEM)",
            pem is not None and pem.startswith("-----BEGIN EC PRIVATE KEY-----"), pem and pem[:40])
    ssh.authorize(keys[0]["key"])
    with tempfile.TemporaryDirectory() as tmp:
        ok, out = ssh.clone(pem or "", os.path.join(tmp, "clone"))
        got = ""
        if ok:
            with open(os.path.join(tmp, "clone", "hello.txt")) as f:
                got = f.read()
        t.check("git clone through sshd with only the deploy key works",
                ok and got == "served through sshd\n", out + ssh.log_text()[-2000:])
        other = os.path.join(tmp, "other")
        os.system(f"ssh-keygen -q -t ecdsa -N '' -f {other} >/dev/null")
        with open(other) as f:
            ok2, out2 = ssh.clone(f.read(), os.path.join(tmp, "clone2"))
        t.check("a key GitLab was not given is refused by the same sshd", not ok2, out2)

    # -- the builder fetches the pushed commit through the same sshd, same key --
    st, d, _ = deliver(co, row["hook_id"], hook["token"],
                       push_payload(ssh.sha, user="alice", ssh_url=ssh.url()), uuid="fetch-1")
    t.check("a push to main is accepted for building", st == 202, f"{st} {d}")

    def build_ended():
        st, b, _ = co.call("GET", "/v1/apps/web/builds", token=key)
        done = [x for x in (b or {}).get("builds", []) if x["status"] in ("failed", "complete")]
        return done[0] if done else None
    build = wait_until(build_ended, 60) or {}
    st, blog, _ = co.call("GET", f"/v1/builds/{build.get('id')}/log", token=key)
    pinned = app_row(co)["known_hosts"] or ""
    t.check("the builder fetched the commit over SSH with the deploy key (host key pinned)",
            build.get("sha") == ssh.sha and build.get("author") == "alice"
            and not (build.get("error") or "").startswith("git") and f"[127.0.0.1]:{ssh.port}"
            in pinned, f"{build} {pinned!r}\n{blog}")

    # -- linking twice --
    st, b2, _ = link(co, deploy="tags")
    state = gl.control()
    t.check("linking twice: 200, nothing created", st == 200
            and b2["deploy_key"]["created"] is False and b2["webhook"]["created"] is False,
            f"{st} {b2}")
    t.check("linking twice: still one key and one hook, same URL and token",
            len(state["keys"].get("42", [])) == 1 and hook_of(gl) is not None
            and hook_of(gl)["url"] == want_url and hook_of(gl)["token"] == hook["token"]
            and hook_of(gl)["tag_push_events"] is True, state)
    t.check("linking twice: same hook id, same key pair",
            app_row(co)["hook_id"] == row["hook_id"]
            and secret_open(co, "apps", "web", "deploy_key_private") == pem, "changed")
    st, b3, _ = link(co, project="group/other")
    t.check("linking to another project while linked: 409", st == 409, f"{st} {b3}")

    # -- unlink --
    st, u, _ = co.call("DELETE", "/v1/apps/web/link", token=key, timeout=120)
    state = gl.control()
    t.check("unlink: 200, webhook and key removed", st == 200 and u["unlinked"] is True
            and u["webhook_removed"] and u["deploy_key_removed"], f"{st} {u}")
    t.check("unlink: nothing left at GitLab",
            not state["keys"].get("42") and not state["hooks"].get("42"), state)
    t.check("unlink: the columns are cleared", nothing_linked(co), app_row(co))
    st, _, _ = deliver(co, row["hook_id"], hook["token"], push_payload(ssh.sha))
    t.check("the old hook URL is gone (404)", st == 404, st)
    st, u, _ = co.call("DELETE", "/v1/apps/web/link", token=key)
    t.check("unlinking twice is harmless", st == 200 and u["unlinked"] is False, f"{st} {u}")

    # -- every GitLab error: a clear message, nothing half-done --
    cases = [
        ("401 bad token", [{"method": "GET", "path": "/projects/group", "status": 401}],
         401, "refused the token (401)"),
        ("403 no permission", [{"method": "POST", "path": "/deploy_keys", "status": 403}],
         403, "Maintainer"),
        ("404 unknown project", [{"method": "GET", "path": "/projects/group", "status": 404}],
         404, "no project group/web"),
        ("409 conflict", [{"method": "POST", "path": "/hooks", "status": 409}],
         409, "conflict (409)"),
        ("422 invalid hook URL", [{"method": "POST", "path": "/hooks", "status": 422}],
         422, "local network"),
        ("429 exhausted", [{"method": "POST", "path": "/hooks", "status": 429, "times": 5,
                            "retry_after": 1}], 429, "rate-limiting"),
        ("500 exhausted", [{"method": "POST", "path": "/deploy_keys", "status": 500,
                            "times": 5}], 500, "HTTP 500, 5 attempts"),
    ]
    for name, rules, status, says in cases:
        gl.control(clear=True, fail=rules)
        st, e, _ = link(co)
        err = (e or {}).get("error", {})
        state = gl.control()
        t.check(f"{name}: 502 gitlab_error with GitLab's status and a clear message",
                st == 502 and err.get("code") == "gitlab_error"
                and err.get("gitlab_status") == status and says in err.get("message", ""),
                f"{st} {e}")
        t.check(f"{name}: nothing left at GitLab, nothing stored",
                not state["keys"].get("42") and not state["hooks"].get("42")
                and nothing_linked(co) and not state["violations"],
                f"{state} {app_row(co)}")
    st, e, _ = link(co, url="http://127.0.0.1:1")
    t.check("GitLab unreachable: 502 naming the URL", st == 502
            and "cannot reach GitLab at http://127.0.0.1:1" in e["error"]["message"]
            and nothing_linked(co), f"{st} {e}")
    st, e, _ = link(co, project="group/nope")
    t.check("a project GitLab does not have: 502 with 404", st == 502
            and e["error"]["gitlab_status"] == 404 and nothing_linked(co), f"{st} {e}")
    st, e, _ = link(co, token="glpat-not-known")
    t.check("a token GitLab does not know: 502 with 401", st == 502
            and e["error"]["gitlab_status"] == 401 and "api scope" in e["error"]["message"],
            f"{st} {e}")
    st, e, _ = link(co, project="../etc")
    t.check("a malformed project path: 400", st == 400, f"{st} {e}")

    # -- transient errors are retried and the link goes through --
    gl.control(clear=True, fail=[
        {"method": "GET", "path": "/projects/group", "status": 429, "retry_after": 1},
        {"method": "POST", "path": "/hooks", "status": 502},
        {"method": "POST", "path": "/deploy_keys", "status": 503}])
    st, b, _ = link(co)
    state = gl.control()
    posts = [r for r in state["requests"] if r["method"] == "POST"]
    t.check("429 then 5xx once each: retried, linked", st == 200
            and len(state["keys"].get("42", [])) == 1 and hook_of(gl) is not None
            and [r["status"] for r in posts].count(201) == 2, f"{st} {b} {posts}")

    # -- unlink when GitLab refuses: nothing cleared; force clears --
    gl.control(tokens=[])
    st, e, _ = co.call("DELETE", "/v1/apps/web/link", token=key, timeout=120)
    t.check("unlink refused by GitLab: 502 and the link is kept",
            st == 502 and app_row(co)["hook_id"] is not None, f"{st} {e}")
    st, u, _ = co.call("DELETE", "/v1/apps/web/link?force=1", token=key, timeout=120)
    t.check("unlink --force: 200 with warnings, columns cleared",
            st == 200 and len(u.get("warnings", [])) == 2 and nothing_linked(co), f"{st} {u}")
    gl.control(tokens=[GL_TOKEN])

    # -- roles: read keys may look, not link --
    reader = co.apikey(name="reader", role="read")
    st, _, _ = co.call("POST", "/v1/apps/web/link", token=reader,
                       body={"gitlab_url": gl.url, "project": "group/web", "token": GL_TOKEN})
    t.check("a read key cannot link (403)", st == 403, st)
    st, s, _ = co.call("GET", "/v1/apps/web/link", token=reader)
    t.check("a read key sees the link state", st == 200 and s["linked"] is False, f"{st} {s}")
    wait_until(lambda: True)
    with open(co.log_path, "rb") as f:
        log = f.read().decode(errors="replace")
    t.check("the coordinator's log holds neither the GitLab token nor the hook token",
            GL_TOKEN not in log and hook["token"] not in log and "PRIVATE KEY" not in log,
            "secret in the log")


if __name__ == "__main__":
    sys.exit(main())
