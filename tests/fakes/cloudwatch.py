#!/usr/bin/env python3
"""A fake of CloudWatch Logs for slipway's tests (Python standard library only).

It speaks the real AWS JSON 1.1 protocol: POST / with
`X-Amz-Target: Logs_20140328.<Operation>` and
`Content-Type: application/x-amz-json-1.1`, for CreateLogGroup,
CreateLogStream, PutLogEvents, PutRetentionPolicy, DescribeLogStreams and
GetLogEvents (the last two for tests to read back). Errors come as the
service sends them: HTTP 400/403/5xx with {"__type": ..., "message": ...}
and the x-amzn-ErrorType header.

Every request must carry a valid AWS Signature Version 4, checked here from
the specification (canonical request, string to sign, derived key,
constant-time compare), independently of slipway's own signer: missing ->
403 MissingAuthenticationTokenException, malformed -> 400
IncompleteSignatureException, unknown key or session token -> 403
UnrecognizedClientException, a wrong signature -> 403
InvalidSignatureException, an X-Amz-Date more than 5 minutes off the fake's
clock -> 400 InvalidSignatureException "Signature expired: ..." (or "not yet
current"), with a Date header, as the real service answers.

PutLogEvents enforces the service's limits with its error names:
InvalidParameterException for more than 10,000 events, more than 1,048,576
bytes (UTF-8 message bytes + 26 per event), an empty message, events out of
chronological order, a span over 24 hours; SerializationException for a
body that is not JSON (invalid UTF-8 included); ResourceNotFoundException
for a missing group or stream. Events older than 14 days (or the group's
retention) or more than 2 hours ahead are not stored and reported in
rejectedLogEventsInfo. Sequence tokens are not used (nor required).

Control (unsigned, under /_fake/):
  POST /_fake/fault    {"kind": K, "count": N, "seconds": S, "target": T, ...}
        throttle       400 ThrottlingException
        error500       500 ServiceUnavailableException
        drop           close the connection without an answer, before storing
        drop_after     store the batch, then close without an answer
        slow           answer after "ms" milliseconds
        partial        report the first "too_old" events as too old and the
                       last "too_new" as too new (not stored)
        expired_token  the current session token expires now: requests with it
                       get 403 ExpiredTokenException; the answer carries the
                       new token to put in the credentials file
        delete_group   delete "group" now (the next put finds it missing)
        skew           move the fake's clock by "offset_s" seconds
      count: how many matching requests it hits (default 1); seconds: instead,
      for how long; target: an operation name (default: PutLogEvents, except
      expired_token: every operation).
  POST /_fake/clear    drop every fault
  POST /_fake/config   {"store": false}: count events without keeping them
  GET  /_fake/stats    counters: requests per operation, errors per code, events
  GET  /_fake/streams  every group and stream with counts and, for lines with
                       "seq=N", the numbers seen: count, distinct, duplicates,
                       missing (from 1 to the highest)
  GET  /_fake/events?group=G&stream=S   the stored events of one stream
  GET  /_fake/rate     events accepted per wall second (for benchmarks)

Usage: cloudwatch.py [--region R] [--access-key K --secret-key S [--token T]]
Binds 127.0.0.1:0 and prints its port on the first line of stdout.
"""
import argparse
import datetime
import hashlib
import hmac
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BATCH_BYTES = 1048576
EVENT_OVERHEAD = 26
MAX_EVENTS = 10000
MAX_SPAN_MS = 24 * 3600 * 1000
PAST_MS = 14 * 24 * 3600 * 1000
FUTURE_MS = 2 * 3600 * 1000
SKEW_MS = 5 * 60 * 1000
RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653}
TARGET_PREFIX = "Logs_20140328."
SEQ_RE = re.compile(r"seq=(\d+)")


class AwsError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class Stream:
    __slots__ = ("name", "created", "events", "count", "bytes", "seqs", "first_ts", "last_ts",
                 "last_ingest")

    def __init__(self, name, now):
        self.name = name
        self.created = now
        self.events = []        # (timestamp, message, ingestion) when storing
        self.count = 0
        self.bytes = 0
        self.seqs = {}          # kind -> list of seq numbers ("log", "logflood", ...)
        self.first_ts = None
        self.last_ts = None
        self.last_ingest = None


class State:
    def __init__(self, region, creds):
        self.lock = threading.Lock()
        self.region = region
        self.creds = creds              # access key -> {"secret":, "token":}
        self.expired_tokens = set()
        self.groups = {}                # name -> {"retention": int|None, "streams": {}, "created"}
        self.faults = []
        self.clock_offset_ms = 0
        self.store = True
        self.requests = {}
        self.errors = {}
        self.accepted = 0
        self.rejected = 0
        self.rate = {}                  # wall second -> events accepted

    def now_ms(self):
        return int(time.time() * 1000) + self.clock_offset_ms


S = None


# ---- SigV4 (AWS General Reference, "Signature Version 4 signing process") ----

def uri_encode(s, keep_slash):
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c.isalnum() and b < 128 or c in "-_.~":
            out.append(c)
        elif c == "/" and keep_slash:
            out.append(c)
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def canonical_uri(raw_path):
    # Non-S3 services: normalize (dot segments, repeated slashes), then encode
    # each segment of the request-line path once more.
    segs = []
    for seg in raw_path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segs:
                segs.pop()
            continue
        segs.append(seg)
    path = "/" + "/".join(segs)
    if raw_path.endswith("/") and path != "/":
        path += "/"
    return uri_encode(path, True)


def canonical_query(raw_query):
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = urllib.parse.unquote(name)
        value = urllib.parse.unquote(value)
        pairs.append((uri_encode(name, False), uri_encode(value, False)))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_header_value(values):
    return ",".join(" ".join(v.strip().split()) for v in values)


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def amz_date_ms(s):
    try:
        d = datetime.datetime.strptime(s, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return int(d.timestamp() * 1000)


def fmt_amz(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y%m%dT%H%M%SZ")


def http_date(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%a, %d %b %Y %H:%M:%S GMT")


def verify_sigv4(method, raw_path, raw_query, headers, body):
    """headers: list of (name, value). Returns the access key; raises AwsError."""
    auth = [v for n, v in headers if n.lower() == "authorization"]
    if not auth:
        raise AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    auth = auth[0]
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise AwsError(400, "IncompleteSignatureException",
                       "Authorization header requires 'Credential', 'SignedHeaders' and "
                       "'Signature' parameters with the AWS4-HMAC-SHA256 algorithm.")
    fields = {}
    for part in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    if not all(k in fields for k in ("Credential", "SignedHeaders", "Signature")):
        raise AwsError(400, "IncompleteSignatureException",
                       "Authorization header requires 'Credential', 'SignedHeaders' and "
                       "'Signature' parameters.")
    cred = fields["Credential"].split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        raise AwsError(400, "IncompleteSignatureException",
                       "Credential should be scoped to a valid region.")
    akid, date, region, service = cred[0], cred[1], cred[2], cred[3]
    amz = [v for n, v in headers if n.lower() == "x-amz-date"]
    if not amz:
        raise AwsError(400, "IncompleteSignatureException",
                       "Authorization header requires existence of either a 'X-Amz-Date' or a "
                       "'Date' header.")
    amz = amz[0].strip()
    when = amz_date_ms(amz)
    if when is None or amz[:8] != date:
        raise AwsError(400, "IncompleteSignatureException",
                       f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version "
                       f"of date from HTTP: '{date}' != '{amz[:8]}', from '{amz}'.")
    if region != S.region or service != "logs":
        raise AwsError(403, "InvalidSignatureException",
                       f"Credential should be scoped to a valid region and service: "
                       f"'{region}/{service}'.")
    creds = S.creds.get(akid)
    if creds is None:
        raise AwsError(403, "UnrecognizedClientException",
                       "The security token included in the request is invalid.")
    signed = fields["SignedHeaders"].split(";")
    if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed:
        raise AwsError(403, "InvalidSignatureException",
                       "The request signature we calculated does not match the signature you "
                       "provided. Check your AWS Secret Access Key and signing method. Consult "
                       "the service documentation for details.")
    token = [v for n, v in headers if n.lower() == "x-amz-security-token"]
    token = token[0] if token else None
    if creds.get("token") or token:
        if token in S.expired_tokens:
            raise AwsError(403, "ExpiredTokenException",
                           "The security token included in the request is expired")
        if token != creds.get("token"):
            raise AwsError(403, "UnrecognizedClientException",
                           "The security token included in the request is invalid.")
    lines = []
    for name in signed:
        values = [v for n, v in headers if n.lower() == name]
        if not values:
            raise AwsError(403, "InvalidSignatureException",
                           f"The request signature we calculated does not match: signed header "
                           f"'{name}' is missing.")
        lines.append(f"{name}:{canonical_header_value(values)}\n")
    creq = "\n".join([method, canonical_uri(raw_path), canonical_query(raw_query),
                      "".join(lines), fields["SignedHeaders"],
                      hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                     hashlib.sha256(creq.encode("utf-8")).hexdigest()])
    k = hmac_sha256(("AWS4" + creds["secret"]).encode("utf-8"), date)
    k = hmac_sha256(k, region)
    k = hmac_sha256(k, service)
    k = hmac_sha256(k, "aws4_request")
    want = hmac.new(k, sts.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, fields["Signature"]):
        raise AwsError(403, "InvalidSignatureException",
                       "The request signature we calculated does not match the signature you "
                       "provided. Check your AWS Secret Access Key and signing method. Consult "
                       "the service documentation for details.")
    # The clock check comes after the signature, as the service does it.
    now = S.now_ms()
    hdr = {"Date": http_date(now)}
    if when < now - SKEW_MS:
        raise AwsError(400, "InvalidSignatureException",
                       f"Signature expired: {amz} is now earlier than {fmt_amz(now - SKEW_MS)} "
                       f"({fmt_amz(now)} - 5 min.)", hdr)
    if when > now + SKEW_MS:
        raise AwsError(400, "InvalidSignatureException",
                       f"Signature not yet current: {amz} is still later than "
                       f"{fmt_amz(now + SKEW_MS)} ({fmt_amz(now)} + 5 min.)", hdr)
    return akid
