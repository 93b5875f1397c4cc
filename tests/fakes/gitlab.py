#!/usr/bin/env python3
"""Fake GitLab REST API v4 (the part slipway's linking uses), for tests.

Serves, under /api/v4, the way GitLab does:
  GET    /projects/:id                  :id is a number or the URL-ENCODED path
                                        ("group%2Fweb"); a raw "group/web" (a second
                                        path segment) is 404 and recorded as a violation
  GET    /projects/:id/deploy_keys      ?per_page (GitLab caps at 100) &page; X-Next-Page,
  GET    /projects/:id/hooks             X-Page, X-Per-Page, X-Total headers
  POST   /projects/:id/deploy_keys      {title, key, can_push}: 201 {id, title, key, can_push,
                                        created_at, fingerprint_sha256}; the same key twice in
                                        a project is 400 {"message": {"key": ["has already
                                        been taken"]}}
  DELETE /projects/:id/deploy_keys/:n   204, or 404 {"message": "404 Deploy Key Not Found"}
  POST   /projects/:id/hooks            {url, token, push_events, tag_push_events,
                                        pipeline_events, push_events_branch_filter,
                                        enable_ssl_verification}: 201 (the token is kept
                                        but, as in GitLab, never returned)
  PUT    /projects/:id/hooks/:n         same fields: 200
  DELETE /projects/:id/hooks/:n         204, or 404 {"message": "404 Not found"}
Checks on every API request (a failure answers as GitLab would AND is recorded in
"violations", so a test can assert there were none):
  - PRIVATE-TOKEN present and one of the known tokens, else 401
    {"message": "401 Unauthorized"};
  - bodies: Content-Type application/json, a JSON object, required fields present
    with the right JSON types (strings, booleans), can_push exactly false,
    enable_ssl_verification exactly true, unknown fields refused; else 400
    {"message": "..."} (GitLab says 400 for missing or wrong parameters).

Control (not part of GitLab), JSON:
  GET  /_control       {"keys": {pid: [...]}, "hooks": {pid: [... with "token"]},
                        "requests": [{"method", "path", "status"}], "violations": [...],
                        "projects": [...], "tokens": [...]}
  POST /_control       any of:
       projects: [{"path", "id", "default_branch", "ssh_url_to_repo"}]  (replaces)
       tokens: ["..."]                     tokens that authenticate (replaces)
       fail: [{"method": "POST", "path": "/hooks", "status": 422, "times": 1,
               "body": {...}, "retry_after": 1}]
             each rule answers the next `times` API requests whose method matches
             (absent: any) and whose path contains `path` (absent: any) with
             `status` (+ Retry-After when given; 429 defaults to 1 s) and `body`
             (default: a GitLab-like message); rules are appended
       per_page_max: N                     lower GitLab's page cap (to test paging)
       clear: true                         forget keys, hooks, requests, violations, rules
Command line: --token T (repeatable), --project PATH:ID[:BRANCH[:SSH_URL]] (repeatable).

Binds 127.0.0.1 on a free port and prints the port alone on stdout's first line.
Exits when stdin reaches EOF or its parent process goes away. Importable too:
FakeGitLab(tokens, projects).start() runs it on a thread (.port, .state, .stop()).
Python standard library only.
"""

import argparse
import datetime
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/api/v4"
KEY_FIELDS = {"title": str, "key": str, "can_push": bool}
KEY_OPTIONAL = {"expires_at"}
HOOK_FIELDS = {"url": str, "token": str, "push_events": bool, "tag_push_events": bool,
               "pipeline_events": bool, "push_events_branch_filter": str,
               "enable_ssl_verification": bool}
HOOK_OPTIONAL = {"merge_requests_events", "issues_events", "note_events", "job_events",
                 "branch_filter_strategy", "name", "description"}
HOOK_REQUIRED = {"url", "token", "push_events", "enable_ssl_verification"}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class State:
    def __init__(self, tokens=None, projects=None):
        self.lock = threading.Lock()
        self.tokens = list(tokens or [])
        self.projects = list(projects or [])
        self.per_page_max = 100
        self.clear()

    def clear(self):
        self.keys = {}       # project id -> [key dicts]
        self.hooks = {}      # project id -> [hook dicts, token included]
        self.requests = []
        self.violations = []
        self.rules = []
        self.next_id = 100

    def new_id(self):
        self.next_id += 1
        return self.next_id

    def snapshot(self):
        return {"keys": {str(k): v for k, v in self.keys.items()},
                "hooks": {str(k): v for k, v in self.hooks.items()},
                "requests": list(self.requests), "violations": list(self.violations),
                "projects": list(self.projects), "tokens": list(self.tokens)}

    def project(self, ident):
        """ident: the raw path segment after /projects/ (percent-encoded)."""
        decoded = urllib.parse.unquote(ident)
        for p in self.projects:
            if decoded.isdigit() and int(decoded) == int(p["id"]):
                return p
            if decoded == p["path"]:
                return p
        return None

    def take_rule(self, method, path):
        for r in self.rules:
            if r.get("times", 1) <= 0:
                continue
            if r.get("method") and r["method"] != method:
                continue
            if r.get("path") and r["path"] not in path:
                continue
            r["times"] = r.get("times", 1) - 1
            return dict(r)
        return None


def default_error_body(status):
    return {400: {"message": "400 Bad request"},
            401: {"message": "401 Unauthorized"},
            403: {"message": "403 Forbidden"},
            404: {"message": "404 Project Not Found"},
            409: {"message": "409 Conflict: the resource exists"},
            422: {"message": {"url": ["is blocked: Requests to the local network are not "
                                      "allowed"]}},
            429: {"message": "Retry later"},
            }.get(status, {"message": "%d Internal Server Error" % status})


def check_body(body, fields, optional, required):
    """None when fine, else a GitLab-like message."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for k in body:
        if k not in fields and k not in optional:
            return "%s does not have a valid value (unknown parameter)" % k
    for k in required:
        if k not in body:
            return "%s is missing" % k
    for k, t in fields.items():
        if k in body and not (type(body[k]) is t):
            return "%s is invalid (expected %s, got %s)" % (k, t.__name__,
                                                            type(body[k]).__name__)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("fake-gitlab: " + (fmt % args) + "\n")

    # -- plumbing --
    def send(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.status_sent = status

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def violation(self, what):
        with self.state.lock:
            self.state.violations.append("%s %s: %s" % (self.command, self.path, what))

    # -- control --
    def control(self):
        st = self.state
        if self.command == "GET":
            with st.lock:
                return self.send(200, st.snapshot())
        try:
            req = json.loads(self.read_body() or b"{}")
        except ValueError:
            return self.send(400, {"error": "control body is not JSON"})
        with st.lock:
            if req.get("clear"):
                st.clear()
            if "projects" in req:
                st.projects = list(req["projects"])
            if "tokens" in req:
                st.tokens = list(req["tokens"])
            if "per_page_max" in req:
                st.per_page_max = int(req["per_page_max"])
            for r in req.get("fail", []):
                st.rules.append(dict(r))
            return self.send(200, st.snapshot())

    # -- the API --
    def handle_any(self):
        self.status_sent = 0
        raw_path = self.path.split("?", 1)[0]
        if raw_path == "/_control":
            return self.control()
        body = self.read_body()
        try:
            self.api(raw_path, body)
        finally:
            with self.state.lock:
                self.state.requests.append({"method": self.command, "path": self.path,
                                            "status": self.status_sent})

    def api(self, raw_path, raw_body):
        st = self.state
        if not raw_path.startswith(API + "/"):
            return self.send(404, {"error": "404 Not Found"})
        token = self.headers.get("PRIVATE-TOKEN")
        if token is None:
            self.violation("no PRIVATE-TOKEN header")
        with st.lock:
            known = token in st.tokens
            rule = st.take_rule(self.command, raw_path)
        if rule:
            status = int(rule.get("status", 500))
            headers = {}
            if status == 429 or "retry_after" in rule:
                headers["Retry-After"] = rule.get("retry_after", 1)
            return self.send(status, rule.get("body", default_error_body(status)), headers)
        if not known:
            return self.send(401, {"message": "401 Unauthorized"})
        parts = raw_path[len(API) + 1:].split("/")
        if parts[0] != "projects" or len(parts) < 2:
            return self.send(404, {"error": "404 Not Found"})
        with st.lock:
            project = st.project(parts[1])
            unencoded = project is None and any(
                st.project("/".join(parts[1:n + 1])) for n in range(2, len(parts)))
        if unencoded:
            # "group/web" sent as it is arrives as two segments: GitLab says 404
            self.violation("project path not URL-encoded (%s)" % raw_path)
        if project is None:
            return self.send(404, {"message": "404 Project Not Found"})
        pid = int(project["id"])
        rest = parts[2:]
        body = None
        if self.command in ("POST", "PUT"):
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/json":
                self.violation("Content-Type %r" % ctype)
                return self.send(400, {"message": "body must be application/json"})
            try:
                body = json.loads(raw_body or b"null")
            except ValueError:
                self.violation("body is not JSON")
                return self.send(400, {"message": "body is not valid JSON"})
        if not rest:
            if self.command != "GET":
                return self.send(405, {"message": "405 Method Not Allowed"})
            return self.send(200, {
                "id": pid, "path_with_namespace": project["path"],
                "name": project["path"].rsplit("/", 1)[-1],
                "default_branch": project.get("default_branch", "main"),
                "ssh_url_to_repo": project.get("ssh_url_to_repo",
                                               "git@gitlab.example.com:%s.git" % project["path"]),
                "http_url_to_repo": "https://gitlab.example.com/%s.git" % project["path"],
                "web_url": "https://gitlab.example.com/%s" % project["path"]})
        if rest[0] == "deploy_keys":
            return self.keys(pid, rest[1:], body)
        if rest[0] == "hooks":
            return self.hooks(pid, rest[1:], body)
        return self.send(404, {"error": "404 Not Found"})

    def page(self, items):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        try:
            per = max(1, min(int(q.get("per_page", ["20"])[0]), self.state.per_page_max))
            page = max(1, int(q.get("page", ["1"])[0]))
        except ValueError:
            return self.send(400, {"message": "page is invalid"})
        chunk = items[(page - 1) * per: page * per]
        more = page * per < len(items)
        return self.send(200, chunk, {"X-Page": page, "X-Per-Page": per, "X-Total": len(items),
                                      "X-Next-Page": page + 1 if more else ""})

    def keys(self, pid, rest, body):
        st = self.state
        with st.lock:
            keys = st.keys.setdefault(pid, [])
            if not rest and self.command == "GET":
                items = [dict(k) for k in keys]
            elif not rest and self.command == "POST":
                problem = check_body(body, KEY_FIELDS, KEY_OPTIONAL, KEY_FIELDS.keys())
                if not problem and body["can_push"] is not False:
                    problem = "can_push must be false for slipway"
                if not problem and not re.match(r"^(ssh-|ecdsa-sha2-)[a-z0-9-]+ [A-Za-z0-9+/=]+",
                                                body["key"]):
                    problem = "key is invalid"
                if problem:
                    st.violations.append("POST deploy_keys: " + problem)
                    return self.send(400, {"message": problem})
                material = " ".join(body["key"].split()[:2])
                if any(" ".join(k["key"].split()[:2]) == material for k in keys):
                    return self.send(400, {"message": {"deploy_key.fingerprint_sha256":
                                                       ["has already been taken"]}})
                k = {"id": st.new_id(), "title": body["title"], "key": body["key"],
                     "can_push": False, "created_at": now_iso()}
                keys.append(k)
                return self.send(201, dict(k))
            elif len(rest) == 1 and rest[0].isdigit() and self.command == "DELETE":
                kid = int(rest[0])
                left = [k for k in keys if k["id"] != kid]
                if len(left) == len(keys):
                    return self.send(404, {"message": "404 Deploy Key Not Found"})
                st.keys[pid] = left
                return self.send(204)
            else:
                return self.send(404, {"error": "404 Not Found"})
        return self.page(items)

    def hooks(self, pid, rest, body):
        st = self.state
        public = ("id", "url", "project_id", "push_events", "tag_push_events",
                  "pipeline_events", "push_events_branch_filter", "enable_ssl_verification",
                  "created_at")
        with st.lock:
            hooks = st.hooks.setdefault(pid, [])
            if not rest and self.command == "GET":
                items = [{k: h[k] for k in public} for h in hooks]
            elif (not rest and self.command == "POST") or \
                    (len(rest) == 1 and rest[0].isdigit() and self.command == "PUT"):
                problem = check_body(body, HOOK_FIELDS, HOOK_OPTIONAL, HOOK_REQUIRED)
                if not problem and body["enable_ssl_verification"] is not True:
                    problem = "enable_ssl_verification must be true for slipway"
                if not problem and not re.match(r"^https?://[^/\s]+/", body["url"]):
                    problem = "url is invalid"
                if not problem and not body["token"]:
                    problem = "token is empty"
                if problem:
                    st.violations.append("%s hooks: %s" % (self.command, problem))
                    return self.send(400, {"message": problem})
                if self.command == "PUT":
                    found = [h for h in hooks if h["id"] == int(rest[0])]
                    if not found:
                        return self.send(404, {"message": "404 Not found"})
                    h = found[0]
                else:
                    h = {"id": st.new_id(), "project_id": pid, "created_at": now_iso(),
                         "tag_push_events": False, "pipeline_events": False,
                         "push_events_branch_filter": ""}
                    hooks.append(h)
                h.update({k: v for k, v in body.items() if k in HOOK_FIELDS})
                return self.send(200 if self.command == "PUT" else 201,
                                 {k: h[k] for k in public})
            elif len(rest) == 1 and rest[0].isdigit() and self.command == "DELETE":
                hid = int(rest[0])
                left = [h for h in hooks if h["id"] != hid]
                if len(left) == len(hooks):
                    return self.send(404, {"message": "404 Not found"})
                st.hooks[pid] = left
                return self.send(204)
            else:
                return self.send(404, {"error": "404 Not Found"})
        return self.page(items)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


class FakeGitLab:
    """In-process use: FakeGitLab(["tok"], [{"path": "g/w", "id": 7}]).start()."""

    def __init__(self, tokens=None, projects=None, verbose=False):
        handler = type("BoundHandler", (Handler,), {})
        handler.state = State(tokens, projects)
        handler.verbose = verbose
        self.state = handler.state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def control(self, **kw):
        with self.state.lock:
            if kw.get("clear"):
                self.state.clear()
            for r in kw.get("fail", []):
                self.state.rules.append(dict(r))
            if "tokens" in kw:
                self.state.tokens = list(kw["tokens"])
            if "projects" in kw:
                self.state.projects = list(kw["projects"])
            if "per_page_max" in kw:
                self.state.per_page_max = int(kw["per_page_max"])
            return self.state.snapshot()


def watch_parent(ppid):
    def run():
        while True:
            if os.getppid() != ppid:
                os._exit(0)
            time.sleep(0.5)

    def stdin_eof():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    threading.Thread(target=run, daemon=True).start()
    threading.Thread(target=stdin_eof, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description="fake GitLab API v4")
    ap.add_argument("--token", action="append", default=[])
    ap.add_argument("--project", action="append", default=[],
                    help="PATH:ID[:DEFAULT_BRANCH[:SSH_URL]]")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    projects = []
    for spec in args.project:
        f = spec.split(":", 3)
        p = {"path": f[0], "id": int(f[1])}
        if len(f) > 2:
            p["default_branch"] = f[2]
        if len(f) > 3:
            p["ssh_url_to_repo"] = f[3]
        projects.append(p)
    fake = FakeGitLab(args.token, projects, args.verbose)
    sys.stdout.write("%d\n" % fake.port)
    sys.stdout.flush()
    watch_parent(os.getppid())
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
