#!/usr/bin/env python3
"""A fake of Amazon EC2 Auto Scaling for slipway's tests (Python standard
library only): the lifecycle-hook calls an instance makes while it leaves.

Query protocol as the service speaks it: POST / with
Content-Type application/x-www-form-urlencoded, Action=...&Version=2011-01-01,
signed with SigV4 (service "autoscaling", checked by tests/fakes/awssig.py
with the Query error names). Operations:
  CompleteLifecycleAction         AutoScalingGroupName, LifecycleHookName,
                                  LifecycleActionResult (CONTINUE|ABANDON),
                                  InstanceId or LifecycleActionToken
  RecordLifecycleActionHeartbeat  AutoScalingGroupName, LifecycleHookName,
                                  InstanceId or LifecycleActionToken
Answers <CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/
doc/2011-01-01/"><CompleteLifecycleActionResult/><ResponseMetadata>...; errors
<ErrorResponse><Error><Type>..</Type><Code>..</Code><Message>..</Message></Error>
<RequestId>..</RequestId></ErrorResponse>. A call for an instance without an
action in progress gets 400 ValidationError "No active Lifecycle Action found
with instance ID i-...", as the service answers.

Control (unsigned, under /_fake/):
  POST /_fake/lifecycle {"group", "hook", "instance_id", "token"?, "timeout_s"?}
        starts a termination lifecycle action (what the group does when it
        scales the instance in); the action times out after timeout_s
        (default 3600) unless heartbeats move it
  GET  /_fake/lifecycle  every action: {"group", "hook", "instance_id", "token",
        "state": "pending|CONTINUE|ABANDON|timed_out", "heartbeats",
        "started_wall", "completed_wall", "completed_monotonic_ns", "calls"}
  POST /_fake/fault {"kind": K, "count": N, "seconds": S, "target": OP}
        throttle       400 Throttling
        error500       500 InternalFailure
        contention     500 ResourceContention
        drop           close the connection without an answer, before acting
        drop_after     act, then close the connection without an answer
        expired_token  every session token in use expires now (ExpiredToken)
        skew           move the fake's clock by "offset_s" seconds
  POST /_fake/clear  drop every fault, reset the clock
  GET  /_fake/stats  {"requests": {op: N}, "errors": {code: N}}

Usage: autoscaling.py [--region R] [--access-key K --secret-key S [--token T]]
Binds 127.0.0.1:0, prints its port on stdout's first line; exits when stdin
closes or its parent goes away.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from awssig import CODES_QUERY, AwsError, Verifier, http_date  # noqa: E402

NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
VERSION = "2011-01-01"
OPS = ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")


class State:
    def __init__(self, region, creds):
        self.lock = threading.Lock()
        self.actions = []
        self.faults = []
        self.requests = {}
        self.errors = {}
        self.verifier = Verifier(region, "autoscaling", creds, codes=CODES_QUERY)


S = None


def take_fault(op):
    now = time.time()
    with S.lock:
        for f in list(S.faults):
            if f.get("until") is not None and now > f["until"]:
                S.faults.remove(f)
                continue
            if f.get("target") not in (None, "*", op):
                continue
            if f.get("until") is None:
                f["count"] -= 1
                if f["count"] <= 0:
                    S.faults.remove(f)
            return dict(f)
    return None


def request_id():
    return str(uuid.uuid4())


def one(params, name, required=True):
    v = params.get(name)
    if not v:
        if required:
            raise AwsError(400, "ValidationError",
                           f"1 validation error detected: Value null at '{name[0].lower()}"
                           f"{name[1:]}' failed to satisfy constraint: Member must not be null")
        return None
    if len(v) != 1 or not v[0]:
        raise AwsError(400, "ValidationError", f"{name}: one non-empty value expected")
    return v[0]


def find_action(params):
    group = one(params, "AutoScalingGroupName")
    hook = one(params, "LifecycleHookName")
    instance = one(params, "InstanceId", False)
    token = one(params, "LifecycleActionToken", False)
    if not instance and not token:
        raise AwsError(400, "ValidationError",
                       "Either InstanceId or LifecycleActionToken must be specified")
    now = time.time()
    for a in S.actions:
        if a["state"] == "pending" and now > a["deadline"]:
            a["state"] = "timed_out"
    for a in S.actions:
        if a["state"] != "pending" or a["group"] != group or a["hook"] != hook:
            continue
        if instance and a["instance_id"] != instance:
            continue
        if token and a["token"] != token:
            continue
        return a
    what = f"instance ID {instance}" if instance else f"token {token}"
    raise AwsError(400, "ValidationError", f"No active Lifecycle Action found with {what}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-autoscaling"

    def log_message(self, fmt, *args):
        pass

    def date_time_string(self, timestamp=None):
        return http_date(S.verifier.now_ms())

    def send(self, status, body, ctype="text/xml"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id())
        self.end_headers()
        self.wfile.write(data)

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
        if method == "POST" and path == "/_fake/lifecycle":
            d = json.loads(body)
            a = {"group": d["group"], "hook": d["hook"], "instance_id": d["instance_id"],
                 "token": d.get("token") or str(uuid.uuid4()), "state": "pending",
                 "heartbeats": 0, "started_wall": time.time(), "completed_wall": None,
                 "completed_monotonic_ns": None, "calls": 0,
                 "timeout_s": float(d.get("timeout_s", 3600))}
            a["deadline"] = a["started_wall"] + a["timeout_s"]
            with S.lock:
                S.actions.append(a)
            return dict(a)
        if method == "GET" and path == "/_fake/lifecycle":
            with S.lock:
                return {"actions": [dict(a) for a in S.actions]}
        if method == "POST" and path == "/_fake/fault":
            f = json.loads(body or b"{}")
            k = f.get("kind")
            if k == "expired_token":
                return {"ok": True, "new_tokens": S.verifier.expire_token(f.get("new_token"))}
            if k == "skew":
                S.verifier.offset_ms = int(float(f.get("offset_s", 0)) * 1000)
                return {"ok": True}
            if k not in ("throttle", "error500", "contention", "drop", "drop_after"):
                raise ValueError("unknown fault")
            f["count"] = int(f.get("count") or 1)
            f["until"] = time.time() + float(f["seconds"]) if f.get("seconds") else None
            with S.lock:
                S.faults.append(f)
            return {"ok": True}
        if method == "POST" and path == "/_fake/clear":
            with S.lock:
                S.faults.clear()
            S.verifier.offset_ms = 0
            return {"ok": True}
        if method == "GET" and path == "/_fake/stats":
            with S.lock:
                return {"requests": dict(S.requests), "errors": dict(S.errors)}
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
        params = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        op = (params.get("Action") or [""])[0]
        with S.lock:
            S.requests[op] = S.requests.get(op, 0) + 1
        try:
            if method != "POST" or url.path != "/":
                raise AwsError(400, "InvalidAction", "POST / only")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/x-www-form-urlencoded":
                raise AwsError(400, "InvalidAction", f"unexpected content type {ctype!r}")
            S.verifier.verify(method, url.path, url.query, list(self.headers.items()), body)
            if op not in OPS:
                raise AwsError(400, "InvalidAction", f"Could not find operation {op}")
            if (params.get("Version") or [""])[0] != VERSION:
                raise AwsError(400, "InvalidAction", "Unsupported version")
            fault = take_fault(op)
            if fault:
                k = fault["kind"]
                with S.lock:
                    S.errors["fault:" + k] = S.errors.get("fault:" + k, 0) + 1
                if k == "throttle":
                    raise AwsError(400, "Throttling", "Rate exceeded")
                if k == "error500":
                    raise AwsError(500, "InternalFailure", "An internal error occurred.")
                if k == "contention":
                    raise AwsError(500, "ResourceContention",
                                   "You already have a pending update to an Auto Scaling "
                                   "resource (for example, a group, instance, or load "
                                   "balancer).")
                if k == "drop":
                    self.drop()
                    return
            with S.lock:
                a = find_action(params)
                a["calls"] += 1
                if op == "CompleteLifecycleAction":
                    result = one(params, "LifecycleActionResult")
                    if result not in ("CONTINUE", "ABANDON"):
                        raise AwsError(400, "ValidationError",
                                       "LifecycleActionResult must be CONTINUE or ABANDON")
                    a["state"] = result
                    a["completed_wall"] = time.time()
                    a["completed_monotonic_ns"] = time.monotonic_ns()
                else:
                    a["heartbeats"] += 1
                    a["deadline"] = time.time() + a["timeout_s"]
            if fault and fault["kind"] == "drop_after":
                self.drop()
                return
            self.send(200, f'<{op}Response xmlns="{NS}">\n  <{op}Result/>\n'
                           f'  <ResponseMetadata>\n    <RequestId>{request_id()}</RequestId>\n'
                           f'  </ResponseMetadata>\n</{op}Response>\n')
        except AwsError as e:
            with S.lock:
                S.errors[e.code] = S.errors.get(e.code, 0) + 1
            kind = "Sender" if e.status < 500 else "Receiver"
            self.send(e.status, f'<ErrorResponse xmlns="{NS}">\n  <Error>\n'
                                f'    <Type>{kind}</Type>\n    <Code>{escape(e.code)}</Code>\n'
                                f'    <Message>{escape(e.message)}</Message>\n  </Error>\n'
                                f'  <RequestId>{request_id()}</RequestId>\n</ErrorResponse>\n')


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
    ap.add_argument("--access-key", default="AKIDFAKEAUTOSCALING1")
    ap.add_argument("--secret-key", default="fake-autoscaling-secret")
    ap.add_argument("--token", default=None)
    a = ap.parse_args()
    S = State(a.region, {a.access_key: {"secret": a.secret_key, "token": a.token}})
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
