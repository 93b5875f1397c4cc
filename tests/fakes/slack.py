#!/usr/bin/env python3
"""Fake Slack incoming webhook, for tests.

  POST /services/<anything>   the webhook: the body must be application/json, a JSON
                              object with a non-empty string "text" (and, when present,
                              "blocks" a list of objects with a "type"); then 200 "ok"
                              and the message is recorded. Otherwise 400
                              "invalid_payload" (recorded in "invalid"). Other paths
                              404 "no_service", as Slack answers.
Control (not part of Slack), JSON:
  GET  /_control     {"messages": [{"path", "body", "ts"}], "attempts": N,
                      "invalid": [...], "answers": [status, ...]}
  POST /_control     any of:
       fail: [{"status": 429, "times": 2, "retry_after": 1}, {"status": 500, "times": 1}]
             the next `times` webhook requests get `status` (429 with Retry-After,
             default 1 s; 5xx with a body), in the order the rules were added
       hang: N       the next N webhook requests get no answer for 30 s (Slack down)
       clear: true   forget messages, counters and rules

Binds 127.0.0.1 on a free port and prints the port alone on stdout's first line.
Exits when stdin reaches EOF or its parent process goes away. Importable too:
FakeSlack().start() runs it on a thread (.port, .url(path), .messages(), .stop()).
Python standard library only.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.clear()

    def clear(self):
        self.messages = []
        self.invalid = []
        self.answers = []
        self.attempts = 0
        self.rules = []
        self.hang = 0

    def snapshot(self):
        return {"messages": list(self.messages), "attempts": self.attempts,
                "invalid": list(self.invalid), "answers": list(self.answers)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("fake-slack: " + (fmt % args) + "\n")

    def send(self, status, text, headers=None, ctype="text/plain"):
        data = text.encode() if isinstance(text, str) else json.dumps(text).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/_control":
            with self.state.lock:
                return self.send(200, self.state.snapshot(), ctype="application/json")
        return self.send(404, "no_service")

    def do_POST(self):
        st = self.state
        raw = self.body()
        if self.path == "/_control":
            req = json.loads(raw or b"{}")
            with st.lock:
                if req.get("clear"):
                    st.clear()
                st.rules.extend(dict(r) for r in req.get("fail", []))
                st.hang += int(req.get("hang", 0))
                return self.send(200, st.snapshot(), ctype="application/json")
        if not self.path.startswith("/services/"):
            return self.send(404, "no_service")
        with st.lock:
            st.attempts += 1
            hang = st.hang > 0
            if hang:
                st.hang -= 1
            rule = None
            for r in st.rules:
                if r.get("times", 1) > 0:
                    r["times"] = r.get("times", 1) - 1
                    rule = r
                    break
        if hang:
            time.sleep(30)
            return
        if rule:
            status = int(rule.get("status", 500))
            headers = {}
            if status == 429:
                headers["Retry-After"] = rule.get("retry_after", 1)
            with st.lock:
                st.answers.append(status)
            return self.send(status, "rate_limited" if status == 429 else "internal_error",
                             headers)
        problem = None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if ctype != "application/json":
            problem = "Content-Type %r" % ctype
        elif not isinstance(msg, dict):
            problem = "not a JSON object"
        elif not isinstance(msg.get("text"), str) or not msg["text"]:
            problem = "no text"
        elif "blocks" in msg and not (isinstance(msg["blocks"], list) and all(
                isinstance(b, dict) and isinstance(b.get("type"), str) for b in msg["blocks"])):
            problem = "blocks malformed"
        with st.lock:
            if problem:
                st.invalid.append(problem)
                st.answers.append(400)
            else:
                st.messages.append({"path": self.path, "body": msg, "ts": time.time()})
                st.answers.append(200)
        if problem:
            return self.send(400, "invalid_payload")
        return self.send(200, "ok")


class FakeSlack:
    def __init__(self, verbose=False):
        handler = type("BoundHandler", (Handler,), {})
        handler.state = State()
        handler.verbose = verbose
        self.state = handler.state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path="/services/T000/B000/XXXXXXXXXXXX"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def control(self, **kw):
        with self.state.lock:
            if kw.get("clear"):
                self.state.clear()
            self.state.rules.extend(dict(r) for r in kw.get("fail", []))
            self.state.hang += int(kw.get("hang", 0))
            return self.state.snapshot()

    def messages(self):
        with self.state.lock:
            return list(self.state.messages)


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
    fake = FakeSlack(verbose="-v" in sys.argv)
    sys.stdout.write("%d\n" % fake.port)
    sys.stdout.flush()
    watch_parent(os.getppid())
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
