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
import sys
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402
from awssig import CODES_QUERY, AwsError, Verifier  # noqa: E402

NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
VERSION = "2011-01-01"
OPS = ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
FAULT_ERRORS = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "error500": (500, "InternalFailure", "An internal error occurred."),
    "contention": (500, "ResourceContention",
                   "You already have a pending update to an Auto Scaling resource (for "
                   "example, a group, instance, or load balancer)."),
}


class State:
    def __init__(self, region, creds):
        self.lock = threading.Lock()
        self.actions = []
        self.faults = awsfake.Faults(self.lock, ("throttle", "error500", "contention", "drop",
                                                 "drop_after"), name_unknown=False)
        self.requests = {}
        self.errors = {}
        self.verifier = Verifier(region, "autoscaling", creds, codes=CODES_QUERY)


S = None


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


def control(method, path, query, body):
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
    done = awsfake.fault_control(method, path, body, S.faults, S.verifier, one_token=False)
    if done is not None:
        return done
    if method == "GET" and path == "/_fake/stats":
        with S.lock:
            return {"requests": dict(S.requests), "errors": dict(S.errors)}
    raise KeyError(path)


class Handler(awsfake.Handler):
    server_version = "fake-autoscaling"

    def fake_now_ms(self):
        return S.verifier.now_ms()

    def request_id(self):
        return request_id()

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if self.serve_control(method, url, body, control):
            return
        params = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        op = (params.get("Action") or [""])[0]
        awsfake.bump(S.lock, S.requests, op)
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
            fault = S.faults.take(op)
            if self.apply_fault(fault, FAULT_ERRORS, (S.lock, S.errors)):
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
            self.send(200, awsfake.xml_answer(NS, op, f"  <{op}Result/>\n", request_id()),
                      "text/xml")
        except AwsError as e:
            awsfake.bump(S.lock, S.errors, e.code)
            self.send(e.status, awsfake.xml_error(NS, e, request_id()), "text/xml")


def main():
    global S
    ap = argparse.ArgumentParser()
    awsfake.add_key_args(ap, "AKIDFAKEAUTOSCALING1", "fake-autoscaling-secret")
    a = ap.parse_args()
    S = State(a.region, awsfake.creds_of(a))
    awsfake.serve(Handler, watch=True)


if __name__ == "__main__":
    main()
