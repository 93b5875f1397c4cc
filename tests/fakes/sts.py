#!/usr/bin/env python3
"""A fake of AWS STS for slipway's tests (Python standard library only):
GetCallerIdentity, the call behind slipway's instance identity.

It speaks the Query protocol as STS does: GET /?Action=GetCallerIdentity&
Version=2011-06-15 signed in the query string (a presigned URL), or POST /
with a form body and an Authorization header; the answer is XML:

  <GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
    <GetCallerIdentityResult><Arn>..</Arn><UserId>..</UserId><Account>..</Account>
    </GetCallerIdentityResult><ResponseMetadata><RequestId>..</RequestId>
    </ResponseMetadata></GetCallerIdentityResponse>

and errors <ErrorResponse><Error><Type>Sender</Type><Code>..</Code>
<Message>..</Message></Error><RequestId>..</RequestId></ErrorResponse>.
Every request's SigV4 signature is checked by tests/fakes/awssig.py (service
"sts", the Query error names: SignatureDoesNotMatch, InvalidClientTokenId,
ExpiredToken, IncompleteSignature, MissingAuthenticationToken); an expired
presigned URL gets 403 ExpiredToken as STS answers it. An identity is what
the signing key belongs to: an assumed-role ARN
arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION (EC2 names an instance
role's session after the instance).

Control (unsigned, under /_fake/):
  POST /_fake/identity {"access_key", "secret", "token", "account", "role",
                        "session"} or {"arn": ..., "user_id": ...}: adds or
                        replaces a key and what GetCallerIdentity says for it
  POST /_fake/fault {"kind": K, "count": N, "seconds": S}
        throttle       400 Throttling
        error500       500 InternalFailure
        error503       503 ServiceUnavailable
        drop           close the connection without an answer
        slow           answer after "ms" milliseconds
        bad_xml        answer 200 with a malformed document
        expired_token  every session token in use expires now (ExpiredToken)
  POST /_fake/clear  drop every fault
  GET  /_fake/stats  {"requests": N, "answered": {code: N}, "calls": [{"method",
                      "host", "headers": [names], "access_key", "code",
                      "monotonic_ns"}]}

Usage: sts.py [--region R] [--access-key K --secret-key S [--token T]]
              [--account A --role R --session S]
Binds 127.0.0.1:0, prints its port on stdout's first line; exits when stdin
closes or its parent goes away.
"""
import argparse
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from awssig import CODES_QUERY, AwsError, Verifier  # noqa: E402
import json  # noqa: E402

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
VERSION = "2011-06-15"


class State:
    def __init__(self, region):
        self.lock = threading.Lock()
        self.creds = {}          # akid -> {"secret", "token"}
        self.who = {}            # akid -> {"arn", "user_id", "account"}
        self.faults = []
        self.requests = 0
        self.answered = {}
        self.calls = []
        self.verifier = Verifier(region, "sts", self.creds, codes=CODES_QUERY)

    def add(self, d):
        akid = d["access_key"]
        account = d.get("account", "123456789012")
        session = d.get("session", "i-0123456789abcdef0")
        role = d.get("role", "slipway-agent")
        arn = d.get("arn") or f"arn:aws:sts::{account}:assumed-role/{role}/{session}"
        user_id = d.get("user_id") or f"AROAFAKEROLEID000001:{session}"
        with self.lock:
            self.creds[akid] = {"secret": d.get("secret", "fake-secret"), "token": d.get("token")}
            self.who[akid] = {"arn": arn, "user_id": user_id, "account": d.get("account_answer",
                                                                             account)}


S = None


def take_fault():
    now = time.time()
    with S.lock:
        for f in list(S.faults):
            if f.get("until") is not None and now > f["until"]:
                S.faults.remove(f)
                continue
            if f.get("until") is None:
                f["count"] -= 1
                if f["count"] <= 0:
                    S.faults.remove(f)
            return dict(f)
    return None


def request_id():
    t = "%032x" % time.time_ns()
    return f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:32]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-sts"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, ctype="text/xml"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id())
        self.end_headers()
        self.wfile.write(data)

    def send_error_xml(self, e):
        kind = "Sender" if e.status < 500 else "Receiver"
        self.send(e.status, f'<ErrorResponse xmlns="{NS}">\n  <Error>\n    <Type>{kind}</Type>\n'
                            f'    <Code>{escape(e.code)}</Code>\n    <Message>{escape(e.message)}'
                            f'</Message>\n  </Error>\n  <RequestId>{request_id()}</RequestId>\n'
                            f'</ErrorResponse>\n')

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def control(self, method, path, body):
        if method == "POST" and path == "/_fake/identity":
            S.add(json.loads(body))
            return {"ok": True}
        if method == "POST" and path == "/_fake/fault":
            f = json.loads(body or b"{}")
            if f.get("kind") == "expired_token":
                return {"ok": True, "new_tokens": S.verifier.expire_token(f.get("new_token"))}
            if f.get("kind") not in ("throttle", "error500", "error503", "drop", "slow",
                                     "bad_xml"):
                raise ValueError("unknown fault")
            f["count"] = int(f.get("count") or 1)
            f["until"] = time.time() + float(f["seconds"]) if f.get("seconds") else None
            with S.lock:
                S.faults.append(f)
            return {"ok": True}
        if method == "POST" and path == "/_fake/clear":
            with S.lock:
                S.faults.clear()
            return {"ok": True}
        if method == "GET" and path == "/_fake/stats":
            with S.lock:
                return {"requests": S.requests, "answered": dict(S.answered),
                        "calls": list(S.calls)}
        raise KeyError(path)

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if url.path.startswith("/_fake/"):
            try:
                self.send(200, json.dumps(self.control(method, url.path, body)),
                          "application/json")
            except (KeyError, ValueError) as e:
                self.send(400, json.dumps({"error": str(e)}), "application/json")
            return
        call = {"method": method, "host": self.headers.get("Host"),
                "headers": [k.lower() for k in self.headers.keys()],
                "monotonic_ns": time.monotonic_ns(), "access_key": None, "code": None}
        with S.lock:
            S.requests += 1
            if len(S.calls) < 10000:
                S.calls.append(call)
        code = "OK"
        try:
            fault = take_fault()
            if fault:
                k = fault["kind"]
                if k == "drop":
                    call["code"] = "drop"
                    self.drop()
                    return
                if k == "slow":
                    time.sleep(float(fault.get("ms", 2000)) / 1000.0)
                if k == "throttle":
                    raise AwsError(400, "Throttling", "Rate exceeded")
                if k == "error500":
                    raise AwsError(500, "InternalFailure", "An internal error occurred.")
                if k == "error503":
                    raise AwsError(503, "ServiceUnavailable", "Service unavailable")
            if url.path != "/":
                raise AwsError(404, "NotFound", "Not found")
            params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            if method == "POST":
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype == "application/x-www-form-urlencoded":
                    for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                                      keep_blank_values=True).items():
                        params.setdefault(k, []).extend(v)
            try:
                akid = S.verifier.verify(method, url.path, url.query,
                                         list(self.headers.items()), body)
            except AwsError as e:
                # An expired presigned URL: STS says ExpiredToken.
                if e.message.startswith("Request has expired"):
                    raise AwsError(403, "ExpiredToken", "The security token included in the "
                                   "request is expired")
                raise
            call["access_key"] = akid
            action = params.get("Action", [""])
            version = params.get("Version", [""])
            if len(action) != 1 or action[0] != "GetCallerIdentity":
                raise AwsError(400, "InvalidAction",
                               f"Could not find operation {action[0] if action else ''} for "
                               f"version {version[0] if version else ''}")
            if len(version) != 1 or version[0] != VERSION:
                raise AwsError(400, "InvalidAction", "Unsupported version")
            with S.lock:
                who = dict(S.who[akid])
            if fault and fault["kind"] == "bad_xml":
                self.send(200, "<GetCallerIdentityResponse><Arn>x</Arn>")
                call["code"] = "bad_xml"
                return
            self.send(200, f'<GetCallerIdentityResponse xmlns="{NS}">\n'
                           f'  <GetCallerIdentityResult>\n'
                           f'    <Arn>{escape(who["arn"])}</Arn>\n'
                           f'    <UserId>{escape(who["user_id"])}</UserId>\n'
                           f'    <Account>{escape(who["account"])}</Account>\n'
                           f'  </GetCallerIdentityResult>\n'
                           f'  <ResponseMetadata>\n    <RequestId>{request_id()}</RequestId>\n'
                           f'  </ResponseMetadata>\n</GetCallerIdentityResponse>\n')
        except AwsError as e:
            code = e.code
            self.send_error_xml(e)
        finally:
            call["code"] = call["code"] or code
            with S.lock:
                S.answered[call["code"]] = S.answered.get(call["code"], 0) + 1


def watch_parent(parent):
    def on_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    def on_parent():
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=on_stdin, daemon=True).start()
    threading.Thread(target=on_parent, daemon=True).start()


def main():
    global S
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--access-key", default="ASIAFAKESTS000000001")
    ap.add_argument("--secret-key", default="fake-sts-secret-key")
    ap.add_argument("--token", default=None)
    ap.add_argument("--account", default="123456789012")
    ap.add_argument("--role", default="slipway-agent")
    ap.add_argument("--session", default="i-0123456789abcdef0")
    a = ap.parse_args()
    S = State(a.region)
    S.add({"access_key": a.access_key, "secret": a.secret_key, "token": a.token,
           "account": a.account, "role": a.role, "session": a.session})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    watch_parent(os.getppid())
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
