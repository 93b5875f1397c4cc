#!/usr/bin/env python3
"""Fake EC2 instance metadata service (IMDSv2 only), for tests.

Serves what slipway's credential provider uses, the way IMDS does:
  PUT /latest/api/token                      needs X-aws-ec2-metadata-token-ttl-seconds
                                             (an integer 1..21600), else 400; answers a
                                             token valid for that many seconds. A request
                                             carrying X-Forwarded-For gets 403.
  GET /latest/meta-data/iam/security-credentials/         the role name
  GET /latest/meta-data/iam/security-credentials/<role>   the credentials JSON
  GET /latest/meta-data/instance-id          the instance id
  GET /latest/meta-data/placement/region     the region
  GET /latest/meta-data/autoscaling/target-lifecycle-state
                                             "InService" (default), "Terminated" while a
                                             termination lifecycle hook runs, ...
  GET /latest/meta-data/spot/instance-action {"action": "terminate", "time": RFC 3339}
                                             once an interruption is scheduled, else 404
  GET /latest/meta-data/tags/instance        the instance's tag keys, one a line (only
                                             with instance metadata tags on), and
  GET /latest/meta-data/tags/instance/<key>  a tag's value
                                             all need X-aws-ec2-metadata-token with a
                                             live token, else 401; no role -> 404.
Anything else under /latest is 404; a wrong method on a known path is 405.

Control (not part of IMDS):
  GET  /_control   JSON: request counters and the current settings
  POST /_control   JSON object, any of:
       access_key_id, secret_access_key, token, expiration (RFC 3339 string),
       role (string, or null for "no role attached"),
       fail_next (answer the next N IMDS requests with fail_status, default 500),
       drop_next (close the connection of the next N IMDS requests without answering),
       revoke_tokens (true: every token issued so far becomes invalid),
       reset_counts (true),
       instance_id, region (strings),
       lifecycle_state (string: "InService", "Terminated", ...; null: 404),
       spot_action ({"action": "terminate"|"stop"|"hibernate", "in_s": N} or null),
       tags (object: key -> value; null: instance metadata tags are off)
Command line: --role, --access-key-id, --secret-access-key, --token, --expiration
set the initial values; -v logs requests to stderr.

Binds 127.0.0.1 on a free port and prints the port alone on stdout's first line.
Exits when stdin reaches EOF or its parent process goes away, so a test that
dies does not leave it behind. Python standard library only.
"""

import argparse
import json
import os
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402

CREDS_PREFIX = "/latest/meta-data/iam/security-credentials/"
META = "/latest/meta-data/"
TAGS_PREFIX = "/latest/meta-data/tags/instance"
TOKEN_PATH = "/latest/api/token"
MAX_TTL = 21600


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.role = args.role
        self.access_key_id = args.access_key_id
        self.secret_access_key = args.secret_access_key
        self.token = args.token
        self.expiration = args.expiration
        self.tokens = {}  # token -> monotonic expiry
        self.fail_next = 0
        self.fail_status = 500
        self.drop_next = 0
        self.instance_id = args.instance_id
        self.region = args.region
        self.lifecycle_state = "InService"
        self.spot_action = None          # {"action", "time"} once scheduled
        self.tags = None                 # None: instance metadata tags off
        self.reset_counts()

    def reset_counts(self):
        self.counts = {
            "token": 0,         # successful token PUTs
            "role": 0,          # role names served
            "creds": 0,         # credential documents served
            "unauthorized": 0,  # 401s
            "bad_request": 0,   # 400s
            "failed": 0,        # injected failures
            "dropped": 0,       # injected dropped connections
            "total": 0,         # every IMDS request
            "lifecycle": 0,     # target-lifecycle-state reads
            "spot": 0,          # spot/instance-action reads
            "meta": 0,          # other metadata reads (instance id, region, tags)
        }
        self.last_ttl = None

    def snapshot(self):
        return {
            "counts": dict(self.counts),
            "last_ttl": self.last_ttl,
            "role": self.role,
            "access_key_id": self.access_key_id,
            "expiration": self.expiration,
            "live_tokens": len(self.tokens),
            "instance_id": self.instance_id,
            "region": self.region,
            "lifecycle_state": self.lifecycle_state,
            "spot_action": self.spot_action,
            "tags": self.tags,
        }


class Handler(awsfake.Handler):
    server_version = "EC2ws"
    state = None  # set in main
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("imds: " + (fmt % args) + "\n")

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=b"", ctype="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _inject(self):
        """Applies fail_next / drop_next; True when the request was consumed."""
        st = self.state
        with st.lock:
            st.counts["total"] += 1
            if st.drop_next > 0:
                st.drop_next -= 1
                st.counts["dropped"] += 1
                drop = True
            else:
                drop = False
            if not drop and st.fail_next > 0:
                st.fail_next -= 1
                st.counts["failed"] += 1
                fail = st.fail_status
            else:
                fail = None
        if drop:
            self.drop()
            return True
        if fail:
            self._send(fail, "injected failure\n")
            return True
        return False

    def _token_ok(self):
        tok = self.headers.get("X-aws-ec2-metadata-token")
        st = self.state
        with st.lock:
            exp = st.tokens.get(tok) if tok else None
            ok = exp is not None and exp > time.monotonic()
            if not ok:
                st.counts["unauthorized"] += 1
        if not ok:
            self._send(401, "")
        return ok

    def do_PUT(self):
        self._read_body()
        if self.path == "/_control":
            return self._send(405, "")
        if not self.path.startswith("/latest"):
            return self._send(404, "")
        if self._inject():
            return
        if self.path != TOKEN_PATH:
            return self._send(405 if self.path.startswith(CREDS_PREFIX) else 404, "")
        if self.headers.get("X-Forwarded-For"):
            return self._send(403, "")
        raw = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        st = self.state
        try:
            ttl = int(raw)
        except (TypeError, ValueError):
            ttl = 0
        if raw is None or not raw.strip().isdigit() or ttl < 1 or ttl > MAX_TTL:
            with st.lock:
                st.counts["bad_request"] += 1
            return self._send(400, "")
        token = "AQAEA" + secrets.token_urlsafe(40)
        with st.lock:
            st.tokens[token] = time.monotonic() + ttl
            st.counts["token"] += 1
            st.last_ttl = raw
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))
        self.send_header("Content-Length", str(len(token)))
        self.end_headers()
        self.wfile.write(token.encode())

    def do_GET(self):
        if self.path == "/_control":
            with self.state.lock:
                snap = self.state.snapshot()
            return self._send(200, json.dumps(snap), "application/json")
        if not self.path.startswith("/latest"):
            return self._send(404, "")
        if self._inject():
            return
        if self.path == TOKEN_PATH:
            return self._send(405, "")
        if not self._token_ok():
            return
        st = self.state
        if self.path == CREDS_PREFIX:
            with st.lock:
                role = st.role
                if role:
                    st.counts["role"] += 1
            return self._send(200, role) if role else self._send(404, "")
        if self.path.startswith(CREDS_PREFIX):
            name = self.path[len(CREDS_PREFIX):]
            with st.lock:
                if not st.role or name != st.role:
                    return self._send(404, "")
                doc = {
                    "Code": "Success",
                    "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": st.access_key_id,
                    "SecretAccessKey": st.secret_access_key,
                    "Token": st.token,
                    "Expiration": st.expiration,
                }
                st.counts["creds"] += 1
            return self._send(200, json.dumps(doc, indent=2), "text/plain")
        return self._metadata()

    def _metadata(self):
        """The rest of the metadata tree slipway reads (token already checked)."""
        st = self.state
        path = self.path
        with st.lock:
            if path == META + "autoscaling/target-lifecycle-state":
                st.counts["lifecycle"] += 1
                v = st.lifecycle_state
            elif path == META + "spot/instance-action":
                st.counts["spot"] += 1
                v = json.dumps(st.spot_action) if st.spot_action else None
            elif path == META + "instance-id":
                st.counts["meta"] += 1
                v = st.instance_id
            elif path == META + "placement/region":
                st.counts["meta"] += 1
                v = st.region
            elif path in (TAGS_PREFIX, TAGS_PREFIX + "/"):
                st.counts["meta"] += 1
                v = "\n".join(sorted(st.tags)) if st.tags is not None else None
            elif path.startswith(TAGS_PREFIX + "/"):
                st.counts["meta"] += 1
                key = path[len(TAGS_PREFIX) + 1:]
                v = st.tags.get(key) if st.tags is not None else None
            else:
                v = None
        return self._send(200, v) if v is not None else self._send(404, "")

    def do_POST(self):
        body = self._read_body()
        if self.path != "/_control":
            return self._send(405 if self.path.startswith("/latest") else 404, "")
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("expected an object")
        except ValueError as e:
            return self._send(400, "bad control request: %s\n" % e)
        st = self.state
        with st.lock:
            for key in ("access_key_id", "secret_access_key", "token", "expiration"):
                if key in req:
                    setattr(st, key, str(req[key]))
            if "role" in req:
                st.role = req["role"] or None
            if "fail_next" in req:
                st.fail_next = int(req["fail_next"])
            if "fail_status" in req:
                st.fail_status = int(req["fail_status"])
            if "drop_next" in req:
                st.drop_next = int(req["drop_next"])
            if req.get("revoke_tokens"):
                st.tokens.clear()
            if req.get("reset_counts"):
                st.reset_counts()
            for key in ("instance_id", "region"):
                if key in req:
                    setattr(st, key, str(req[key]))
            if "lifecycle_state" in req:
                st.lifecycle_state = req["lifecycle_state"]
            if "spot_action" in req:
                a = req["spot_action"]
                st.spot_action = None if not a else {
                    "action": a.get("action", "terminate"),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                          time.gmtime(time.time() + float(a.get("in_s", 120))))}
            if "tags" in req:
                st.tags = dict(req["tags"]) if req["tags"] is not None else None
            snap = st.snapshot()
        return self._send(200, json.dumps(snap), "application/json")


def main():
    ap = argparse.ArgumentParser(description="fake IMDSv2")
    ap.add_argument("--role", default="slipway-test-role")
    ap.add_argument("--access-key-id", default="ASIAFAKEIMDS0000001")
    ap.add_argument("--secret-access-key", default="fake/imds+secret0000000000000000000001")
    ap.add_argument("--token", default="FwoGZXIvYXdzEFAKEsessiontoken0001")
    ap.add_argument("--expiration", default="2030-01-01T06:00:00Z")
    ap.add_argument("--instance-id", default="i-0123456789abcdef0")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    Handler.state = State(args)
    Handler.verbose = args.verbose
    awsfake.serve(Handler, watch=True)


if __name__ == "__main__":
    main()
