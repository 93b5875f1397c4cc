#!/usr/bin/env python3
"""A registry front that wants ECR logins, for tests/integration/test_ecr.py.

    registry_front.py --to HOST:PORT

Binds 127.0.0.1 port 0, prints the port on the first stdout line, and
forwards the Docker Registry HTTP API v2 to the real registry at HOST:PORT
(the harness's docker-registry), but only for requests that carry HTTP Basic
credentials of user "AWS" with a password the fake ECR (tests/fakes/ecr.py)
issued and still honours (its /_fake/check): what ECR's registry asks of
Docker. Anything else gets 401 with a Basic challenge, the answer dockerd
turns into "no basic auth credentials" or "unauthorized". The Host header is
passed on, so the registry's Location headers point back here.

Control (under /_front/, no credentials):
  POST /_front/config  {"check_url": "http://127.0.0.1:P/_fake/check",
                        "refuse_all": bool}   (refuse_all: even valid logins)
  GET  /_front/stats   {"missing", "refused", "authorized",
                        "passwords": {password: {"push": n, "pull": n}}}
  POST /_front/clear   zeroes the counters
Standard library only.
"""
import argparse
import base64
import http.client
import json
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "authorization"}


class State:
    def __init__(self, upstream):
        self.lock = threading.Lock()
        self.upstream = upstream
        self.check_url = None
        self.refuse_all = False
        self.clear()

    def clear(self):
        self.missing = 0
        self.refused = 0
        self.authorized = 0
        self.passwords = {}


S = None


def live(password):
    if not S.check_url:
        return False
    url = S.check_url + "?password=" + urllib.parse.quote(password, safe="")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return bool(json.loads(r.read()).get("valid"))
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "registry-front"

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k in (headers or {})):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def challenge(self, why):
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": why,
                                       "detail": None}]}).encode()
        self.reply(401, body, {"Content-Type": "application/json",
                               "WWW-Authenticate": 'Basic realm="slipway-test-ecr"',
                               "Docker-Distribution-Api-Version": "registry/2.0"},
                   head=self.command == "HEAD")

    def control(self, body):
        path = urllib.parse.urlsplit(self.path).path
        if self.command == "POST" and path == "/_front/config":
            doc = json.loads(body or b"{}")
            with S.lock:
                if "check_url" in doc:
                    S.check_url = doc["check_url"]
                if "refuse_all" in doc:
                    S.refuse_all = bool(doc["refuse_all"])
            out = {"ok": True}
        elif self.command == "POST" and path == "/_front/clear":
            with S.lock:
                S.clear()
            out = {"ok": True}
        elif self.command == "GET" and path == "/_front/stats":
            with S.lock:
                out = {"missing": S.missing, "refused": S.refused, "authorized": S.authorized,
                       "passwords": json.loads(json.dumps(S.passwords))}
        else:
            return self.reply(404, b"{}", {"Content-Type": "application/json"})
        self.reply(200, json.dumps(out).encode(), {"Content-Type": "application/json"})

    def handle_any(self):
        body = self.read_body()
        if self.path.startswith("/_front/"):
            return self.control(body)
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Basic "):
            with S.lock:
                S.missing += 1
            return self.challenge("authentication required")
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if user != "AWS" or S.refuse_all or not live(password):
            with S.lock:
                S.refused += 1
            return self.challenge("Your authorization token has expired. Reauthenticate "
                                  "and try again.")
        kind = "pull" if self.command in ("GET", "HEAD") else "push"
        with S.lock:
            S.authorized += 1
            p = S.passwords.setdefault(password, {"push": 0, "pull": 0})
            p[kind] += 1
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        host, _, port = S.upstream.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            out = {k: v for k, v in r.getheaders() if k.lower() not in HOP}
            if self.command != "HEAD":
                out = {k: v for k, v in out.items() if k.lower() != "content-length"}
                out["Content-Length"] = str(len(data))
            self.reply(r.status, data, out, head=self.command == "HEAD")
        finally:
            conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    global S
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True, help="the real registry, host:port")
    a = ap.parse_args()
    S = State(a.to)
    srv = Server(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
