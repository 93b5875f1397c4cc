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
import json
import os
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402
from awssig import CODES_QUERY, AwsError, Verifier  # noqa: E402

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
VERSION = "2011-06-15"
FAULT_ERRORS = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "error500": (500, "InternalFailure", "An internal error occurred."),
    "error503": (503, "ServiceUnavailable", "Service unavailable"),
}


class State:
    def __init__(self, region):
        self.lock = threading.Lock()
        self.creds = {}          # akid -> {"secret", "token"}
        self.who = {}            # akid -> {"arn", "user_id", "account"}
        self.faults = awsfake.Faults(self.lock, ("throttle", "error500", "error503", "drop",
                                                 "slow", "bad_xml"), name_unknown=False)
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


def request_id():
    t = "%032x" % time.time_ns()
    return f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:32]}"


def control(method, path, query, body):
    if method == "POST" and path == "/_fake/identity":
        S.add(json.loads(body))
        return {"ok": True}
    done = awsfake.fault_control(method, path, body, S.faults, S.verifier, one_token=False,
                                 skew=False)
    if done is not None:
        return done
    if method == "GET" and path == "/_fake/stats":
        with S.lock:
            return {"requests": S.requests, "answered": dict(S.answered),
                    "calls": list(S.calls)}
    raise KeyError(path)


class Handler(awsfake.Handler):
    server_version = "fake-sts"

    def request_id(self):
        return request_id()

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if self.serve_control(method, url, body, control):
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
            fault = S.faults.take()
            if self.apply_fault(fault, FAULT_ERRORS):
                call["code"] = "drop"
                return
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
                self.send(200, "<GetCallerIdentityResponse><Arn>x</Arn>", "text/xml")
                call["code"] = "bad_xml"
                return
            self.send(200, awsfake.xml_answer(NS, "GetCallerIdentity",
                                              f'  <GetCallerIdentityResult>\n'
                                              f'    <Arn>{escape(who["arn"])}</Arn>\n'
                                              f'    <UserId>{escape(who["user_id"])}</UserId>\n'
                                              f'    <Account>{escape(who["account"])}</Account>\n'
                                              f'  </GetCallerIdentityResult>\n',
                                              request_id()), "text/xml")
        except AwsError as e:
            code = e.code
            self.send(e.status, awsfake.xml_error(NS, e, request_id()), "text/xml")
        finally:
            call["code"] = call["code"] or code
            with S.lock:
                S.answered[call["code"]] = S.answered.get(call["code"], 0) + 1


def main():
    global S
    ap = argparse.ArgumentParser()
    awsfake.add_key_args(ap, "ASIAFAKESTS000000001", "fake-sts-secret-key")
    ap.add_argument("--account", default="123456789012")
    ap.add_argument("--role", default="slipway-agent")
    ap.add_argument("--session", default="i-0123456789abcdef0")
    a = ap.parse_args()
    S = State(a.region)
    S.add({"access_key": a.access_key, "secret": a.secret_key, "token": a.token,
           "account": a.account, "role": a.role, "session": a.session})
    awsfake.serve(Handler, watch=True)


if __name__ == "__main__":
    main()
