#!/usr/bin/env python3
"""A fake of CloudWatch Logs for slipway's tests (Python standard library only).

It speaks the real AWS JSON 1.1 protocol: POST / with
`X-Amz-Target: Logs_20140328.<Operation>` and
`Content-Type: application/x-amz-json-1.1`, for CreateLogGroup,
CreateLogStream, PutLogEvents, PutRetentionPolicy, DescribeLogStreams,
GetLogEvents (startFromHead, startTime/endTime, forward and backward
tokens) and FilterLogEvents (a group's streams by prefix or name, time
range, simple filter terms, pages of at most `limit` events and 1 MB with a
stable nextToken): the last three are how `slipway logs` reads. Errors come as the
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
  POST /_fake/fault    {"kind": K, "count": N, "seconds": S, "target": T, "group": G,
                        "stream": S, ...}
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
      expired_token: every operation); group, stream: only requests for them.
  POST /_fake/clear    drop every fault
  POST /_fake/config   {"store": false}: count events without keeping them
  GET  /_fake/stats    counters: requests per operation, errors per code, events
  GET  /_fake/streams  every group and stream with counts and, for lines with
                       "seq=N", the numbers seen: count, distinct, duplicates,
                       missing (from 1 to the highest)
  GET  /_fake/events?group=G&stream=S   the stored events of one stream
  GET  /_fake/rate     events accepted per wall second (for benchmarks)
  GET  /_fake/batches?group=G&stream=S   [wall time, events] of each accepted put

Usage: cloudwatch.py [--region R] [--access-key K --secret-key S [--token T]]
Binds 127.0.0.1:0 and prints its port on the first line of stdout.
"""
import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402
from awssig import CODES_JSON, AwsError, Verifier  # noqa: E402

MAX_BATCH_BYTES = 1048576
EVENT_OVERHEAD = 26
MAX_EVENTS = 10000
MAX_SPAN_MS = 24 * 3600 * 1000
PAST_MS = 14 * 24 * 3600 * 1000
FUTURE_MS = 2 * 3600 * 1000
RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653}
TARGET_PREFIX = "Logs_20140328."
SEQ_RE = re.compile(r"seq=(\d+)")
FAULT_ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "error500": (500, "ServiceUnavailableException", "The service cannot complete the request."),
}


class Stream:
    __slots__ = ("name", "created", "events", "count", "bytes", "seqs", "first_ts", "last_ts",
                 "first_ingest", "last_ingest", "first_wall", "last_wall", "batches")

    def __init__(self, name, now):
        self.name = name
        self.created = now
        self.events = []        # (timestamp, message, ingestion) when storing
        self.count = 0
        self.bytes = 0
        self.seqs = {}          # kind -> list of seq numbers ("log", "logflood", ...)
        self.first_ts = None
        self.last_ts = None
        self.first_ingest = None
        self.last_ingest = None
        self.first_wall = None   # time.time() of the first and last stored batch
        self.last_wall = None
        self.batches = []        # (wall time, events stored) per accepted put


class State:
    def __init__(self, region, creds):
        self.lock = threading.Lock()
        self.region = region
        self.creds = creds              # access key -> {"secret":, "token":}
        self.expired_tokens = set()
        self.groups = {}                # name -> {"retention": int|None, "streams": {}, "created"}
        self.faults = awsfake.Faults(self.lock, ("throttle", "error500", "drop", "drop_after",
                                                 "slow", "partial"))
        self.clock_offset_ms = 0
        self.store = True
        self.requests = {}
        self.errors = {}
        self.accepted = 0
        self.rejected = 0
        self.rate = {}                  # wall second -> events accepted
        self.verifier = Verifier(region, "logs", creds, now_ms=self.now_ms, codes=CODES_JSON)
        self.verifier.expired_tokens = self.expired_tokens

    def now_ms(self):
        return int(time.time() * 1000) + self.clock_offset_ms


S = None


# ---- operations ----

def need_str(doc, key, pattern=None, max_len=512):
    v = doc.get(key)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise AwsError(400, "InvalidParameterException",
                       f"1 validation error detected: Value at '{key}' failed to satisfy "
                       f"constraint: Member must have length between 1 and {max_len}")
    if pattern and not re.fullmatch(pattern, v):
        raise AwsError(400, "InvalidParameterException",
                       f"1 validation error detected: Value '{v}' at '{key}' failed to satisfy "
                       f"constraint: Member must satisfy regular expression pattern: {pattern}")
    return v


GROUP_RE = r"[\.\-_/#A-Za-z0-9]+"
STREAM_RE = r"[^:*]*"


def get_group(name):
    g = S.groups.get(name)
    if g is None:
        raise AwsError(400, "ResourceNotFoundException", "The specified log group does not exist.")
    return g


def op_create_log_group(doc):
    name = need_str(doc, "logGroupName", GROUP_RE)
    with S.lock:
        if name in S.groups:
            raise AwsError(400, "ResourceAlreadyExistsException",
                           "The specified log group already exists")
        S.groups[name] = {"retention": None, "streams": {}, "created": S.now_ms()}
    return {}


def op_create_log_stream(doc):
    group = need_str(doc, "logGroupName", GROUP_RE)
    name = need_str(doc, "logStreamName", STREAM_RE)
    with S.lock:
        g = get_group(group)
        if name in g["streams"]:
            raise AwsError(400, "ResourceAlreadyExistsException",
                           "The specified log stream already exists")
        g["streams"][name] = Stream(name, S.now_ms())
    return {}


def op_put_retention_policy(doc):
    group = need_str(doc, "logGroupName", GROUP_RE)
    days = doc.get("retentionInDays")
    if not isinstance(days, int) or days not in RETENTION_DAYS:
        raise AwsError(400, "InvalidParameterException",
                       f"1 validation error detected: Value '{days}' at 'retentionInDays' failed "
                       f"to satisfy constraint: Member must satisfy enum value set")
    with S.lock:
        get_group(group)["retention"] = days
    return {}


def op_put_log_events(doc, fault):
    group = need_str(doc, "logGroupName", GROUP_RE)
    name = need_str(doc, "logStreamName", STREAM_RE)
    events = doc.get("logEvents")
    if not isinstance(events, list) or not events:
        raise AwsError(400, "InvalidParameterException",
                       "1 validation error detected: Value at 'logEvents' failed to satisfy "
                       "constraint: Member must have length greater than or equal to 1")
    if len(events) > MAX_EVENTS:
        raise AwsError(400, "InvalidParameterException",
                       f"1 validation error detected: Value at 'logEvents' failed to satisfy "
                       f"constraint: Member must have length less than or equal to {MAX_EVENTS}")
    try:
        stamps = [e["timestamp"] for e in events]
        msgs = [e["message"] for e in events]
    except (TypeError, KeyError):
        raise AwsError(400, "InvalidParameterException",
                       "logEvents: every event needs a timestamp and a message")
    if not all(type(t) is int for t in stamps) or not all(type(m) is str for m in msgs):
        raise AwsError(400, "InvalidParameterException",
                       "logEvents: timestamp must be a long and message a string")
    for i, m in enumerate(msgs):
        if not m:
            raise AwsError(400, "InvalidParameterException",
                           f"1 validation error detected: Value at 'logEvents.{i + 1}.member."
                           f"message' failed to satisfy constraint: Member must have length "
                           f"greater than or equal to 1")
    # The service counts UTF-8 bytes of each message plus 26.
    size = sum(len(m) if m.isascii() else len(m.encode("utf-8")) for m in msgs) + \
        EVENT_OVERHEAD * len(msgs)
    if any(a > b for a, b in zip(stamps, stamps[1:])):
        raise AwsError(400, "InvalidParameterException",
                       "Log events in a single PutLogEvents request must be in "
                       "chronological order.")
    if size > MAX_BATCH_BYTES:
        raise AwsError(400, "InvalidParameterException",
                       f"Upload too large: {size} bytes exceeds limit of {MAX_BATCH_BYTES}")
    if events[-1]["timestamp"] - events[0]["timestamp"] > MAX_SPAN_MS:
        raise AwsError(400, "InvalidParameterException",
                       "The batch of log events in a single PutLogEvents request cannot span "
                       "more than 24 hours.")
    with S.lock:
        g = get_group(group)
        st = g["streams"].get(name)
        if st is None:
            raise AwsError(400, "ResourceNotFoundException",
                           "The specified log stream does not exist.")
        now = S.now_ms()
        n = len(events)
        oldest = now - PAST_MS
        expired_before = now - g["retention"] * 86400000 if g["retention"] else None
        too_old_end = 0
        while too_old_end < n and events[too_old_end]["timestamp"] < oldest:
            too_old_end += 1
        expired_end = 0
        if expired_before is not None:
            while expired_end < n and events[expired_end]["timestamp"] < expired_before:
                expired_end += 1
        too_new_start = n
        while too_new_start > 0 and events[too_new_start - 1]["timestamp"] > now + FUTURE_MS:
            too_new_start -= 1
        if fault and fault["kind"] == "partial":
            too_old_end = max(too_old_end, min(n, int(fault.get("too_old", 0))))
            too_new_start = min(too_new_start, max(0, n - int(fault.get("too_new", 0))))
        start = max(too_old_end, expired_end)
        info = {}
        if too_old_end:
            info["tooOldLogEventEndIndex"] = too_old_end
        if expired_end:
            info["expiredLogEventEndIndex"] = expired_end
        if too_new_start < n:
            info["tooNewLogEventStartIndex"] = too_new_start
        kept = events[start:too_new_start] if start < too_new_start else []
        if kept:
            st.count += len(kept)
            lo, hi = kept[0]["timestamp"], kept[-1]["timestamp"]
            st.first_ts = lo if st.first_ts is None else min(st.first_ts, lo)
            st.last_ts = hi if st.last_ts is None else max(st.last_ts, hi)
        if S.store:
            for e in kept:
                msg = e["message"]
                ts = e["timestamp"]
                st.bytes += len(msg)
                st.events.append((ts, msg, now))
                m = SEQ_RE.search(msg, 0, 64)
                if m:
                    kind = msg.split(" ", 2)[1] if msg.startswith("testsrv ") else "seq"
                    st.seqs.setdefault(kind, []).append(int(m.group(1)))
        st.last_ingest = now
        if kept:
            wall = time.time()
            if st.first_wall is None:
                st.first_wall = wall
            st.last_wall = wall
            if len(st.batches) < 1000000:
                st.batches.append((wall, len(kept)))
        S.accepted += len(kept)
        S.rejected += n - len(kept)
        sec = int(time.time())
        S.rate[sec] = S.rate.get(sec, 0) + len(kept)
    out = {}
    if info:
        out["rejectedLogEventsInfo"] = info
    return out


def op_describe_log_streams(doc):
    group = need_str(doc, "logGroupName", GROUP_RE)
    prefix = doc.get("logStreamNamePrefix") or ""
    with S.lock:
        g = get_group(group)
        out = []
        for name in sorted(g["streams"]):
            if not name.startswith(prefix):
                continue
            st = g["streams"][name]
            d = {"logStreamName": name, "creationTime": st.created, "storedBytes": 0,
                 "arn": f"arn:aws:logs:{S.region}:123456789012:log-group:{group}:log-stream:"
                        f"{name}"}
            if st.first_ts is not None:
                d.update(firstEventTimestamp=st.first_ts, lastEventTimestamp=st.last_ts,
                         lastIngestionTime=st.last_ingest)
            out.append(d)
    return {"logStreams": out}


def op_get_log_events(doc):
    group = need_str(doc, "logGroupName", GROUP_RE)
    name = need_str(doc, "logStreamName", STREAM_RE)
    limit = doc.get("limit") or 10000
    start_ms, end_ms = doc.get("startTime"), doc.get("endTime")
    token = doc.get("nextToken")
    with S.lock:
        st = get_group(group)["streams"].get(name)
        if st is None:
            raise AwsError(400, "ResourceNotFoundException",
                           "The specified log stream does not exist.")
        all_ = st.events
        n = len(all_)
        if token:
            try:
                kind, pos = token.split("/", 1)
                pos = int(pos)
                if kind not in ("f", "b") or pos < 0 or pos > n:
                    raise ValueError
            except ValueError:
                raise AwsError(400, "InvalidParameterException",
                               "The specified nextToken is invalid.")
        elif doc.get("startFromHead"):
            kind, pos = "f", 0
        else:
            kind, pos = "b", n   # the service's default: the newest events

        def keep(i):
            t = all_[i][0]
            return (start_ms is None or t >= start_ms) and (end_ms is None or t < end_ms)
        if kind == "f":
            idx = [i for i in range(pos, n) if keep(i)][:limit]
            lo = idx[0] if idx else pos
            hi = idx[-1] + 1 if idx else pos
        else:
            idx = [i for i in range(0, pos) if keep(i)][-limit:] if limit else []
            lo = idx[0] if idx else pos
            hi = idx[-1] + 1 if idx else pos
        evs = [all_[i] for i in idx]
    return {"events": [{"timestamp": t, "message": m, "ingestionTime": i} for t, m, i in evs],
            "nextForwardToken": f"f/{hi if kind == 'f' or idx else n}",
            "nextBackwardToken": f"b/{lo}"}


def op_filter_log_events(doc):
    """FilterLogEvents: events of a group's streams (all, a name prefix, or
    named ones), oldest first, in pages of at most `limit` events and 1 MB;
    startTime and endTime are inclusive; filterPattern terms must all occur.
    nextToken names the last event returned (timestamp, stream, position),
    so a page is stable while events arrive."""
    group = need_str(doc, "logGroupName", GROUP_RE)
    prefix = doc.get("logStreamNamePrefix")
    names = doc.get("logStreamNames")
    if prefix is not None and names is not None:
        raise AwsError(400, "InvalidParameterException",
                       "logStreamNamePrefix and logStreamNames cannot both be given")
    limit = doc.get("limit") or 10000
    if not isinstance(limit, int) or limit < 1 or limit > 10000:
        raise AwsError(400, "InvalidParameterException",
                       "1 validation error detected: Value at 'limit' failed to satisfy "
                       "constraint: Member must have value between 1 and 10000")
    start_ms, end_ms = doc.get("startTime"), doc.get("endTime")
    terms = (doc.get("filterPattern") or "").split()
    after = None
    if doc.get("nextToken"):
        try:
            t, stream_name, pos = json.loads(
                urllib.parse.unquote(doc["nextToken"].split(":", 1)[1]))
            after = (int(t), str(stream_name), int(pos))
        except (IndexError, ValueError, TypeError):
            raise AwsError(400, "InvalidParameterException",
                           "The specified nextToken is invalid.")
    with S.lock:
        g = get_group(group)
        picked = []
        searched = []
        for sname in sorted(g["streams"]):
            if prefix and not sname.startswith(prefix):
                continue
            if names is not None and sname not in names:
                continue
            searched.append(sname)
            for i, (t, m, ing) in enumerate(g["streams"][sname].events):
                if start_ms is not None and t < start_ms:
                    continue
                if end_ms is not None and t > end_ms:
                    continue
                if terms and not all(x in m for x in terms):
                    continue
                key = (t, sname, i)
                if after is not None and key <= after:
                    continue
                picked.append((key, m, ing))
    picked.sort(key=lambda e: e[0])
    out, size = [], 0
    for key, m, ing in picked:
        if len(out) >= limit or (out and size + len(m) > 1048576):
            break
        size += len(m)
        out.append({"logStreamName": key[1], "timestamp": key[0], "message": m,
                    "ingestionTime": ing, "eventId": "%020d%04d%012d" % (
                        key[0], sorted(g["streams"]).index(key[1]) % 10000, key[2])})
    resp = {"events": out,
            "searchedLogStreams": [{"logStreamName": n, "searchedCompletely": True}
                                   for n in searched]}
    if len(out) < len(picked):
        last = out[-1]
        idx = int(last["eventId"][-12:])
        resp["nextToken"] = "ft:" + urllib.parse.quote(json.dumps(
            [last["timestamp"], last["logStreamName"], idx]))
    return resp


OPS = {
    "CreateLogGroup": op_create_log_group,
    "CreateLogStream": op_create_log_stream,
    "PutRetentionPolicy": op_put_retention_policy,
    "DescribeLogStreams": op_describe_log_streams,
    "GetLogEvents": op_get_log_events,
    "FilterLogEvents": op_filter_log_events,
}


# ---- control ----

def summary():
    out = []
    with S.lock:
        for gname, g in sorted(S.groups.items()):
            for sname, st in sorted(g["streams"].items()):
                seqs = {}
                for kind, lst in st.seqs.items():
                    distinct = set(lst)
                    hi = max(distinct) if distinct else 0
                    seqs[kind] = {"count": len(lst), "distinct": len(distinct),
                                  "duplicates": len(lst) - len(distinct), "max": hi,
                                  "missing": hi - len([x for x in distinct if 1 <= x <= hi]),
                                  "ordered": all(lst[i] < lst[i + 1] for i in range(len(lst) - 1))}
                out.append({"group": gname, "stream": sname, "retention": g["retention"],
                            "count": st.count, "bytes": st.bytes, "seqs": seqs,
                            "first_wall": st.first_wall, "last_wall": st.last_wall})
    return out


def control(method, path, query, body):
    if method == "POST" and path == "/_fake/fault":
        f = json.loads(body or b"{}")
        kind = f.get("kind")
        resp = {"ok": True}
        if kind == "delete_group":
            with S.lock:
                S.groups.pop(f.get("group"), None)
            return resp
        if kind == "skew":
            with S.lock:
                S.clock_offset_ms = int(float(f.get("offset_s", 0)) * 1000)
            return resp
        if kind == "expired_token":
            with S.lock:
                for akid, c in S.creds.items():
                    if c.get("token"):
                        S.expired_tokens.add(c["token"])
                        c["token"] = f.get("new_token") or ("tok-" + str(time.time_ns()))
                        resp["new_token"] = c["token"]
            return resp
        S.faults.add(f, default_target="PutLogEvents")
        return resp
    if method == "POST" and path == "/_fake/clear":
        S.faults.clear()
        with S.lock:
            S.clock_offset_ms = 0
        return {"ok": True}
    if method == "POST" and path == "/_fake/config":
        f = json.loads(body or b"{}")
        with S.lock:
            if "store" in f:
                S.store = bool(f["store"])
        return {"ok": True}
    if method == "GET" and path == "/_fake/stats":
        with S.lock:
            return {"requests": dict(S.requests), "errors": dict(S.errors),
                    "accepted": S.accepted, "rejected": S.rejected,
                    "faults": [dict(f) for f in S.faults.items]}
    if method == "GET" and path == "/_fake/streams":
        return {"streams": summary()}
    if method == "GET" and path == "/_fake/rate":
        with S.lock:
            return {"rate": {str(k): v for k, v in sorted(S.rate.items())}}
    if method == "GET" and path == "/_fake/batches":
        q = urllib.parse.parse_qs(query)
        g, s = q.get("group", [""])[0], q.get("stream", [""])[0]
        with S.lock:
            grp = S.groups.get(g)
            st = grp["streams"].get(s) if grp else None
            return {"batches": list(st.batches) if st else []}
    if method == "GET" and path == "/_fake/events":
        q = urllib.parse.parse_qs(query)
        g, s = q.get("group", [""])[0], q.get("stream", [""])[0]
        with S.lock:
            grp = S.groups.get(g)
            st = grp["streams"].get(s) if grp else None
            evs = list(st.events) if st else []
        return {"events": [{"timestamp": t, "message": m} for t, m, _ in evs]}
    raise KeyError(path)


class Handler(awsfake.JsonHandler):
    server_version = "fake-cloudwatch"
    json_type = "application/x-amz-json-1.1"
    control_type = json_type
    target_prefix = TARGET_PREFIX
    fault_errors = FAULT_ERRORS
    known_ops = set(OPS) | {"PutLogEvents"}
    control = staticmethod(control)

    def state(self):
        return S

    def fake_now_ms(self):
        return S.now_ms()

    def take_fault(self, op, doc):
        return S.faults.take(op, group=doc.get("logGroupName"),
                             stream=doc.get("logStreamName"))

    def call(self, op, akid, doc, fault):
        if op == "PutLogEvents":
            return op_put_log_events(doc, fault)
        return OPS[op](doc)


def main():
    global S
    ap = argparse.ArgumentParser()
    awsfake.add_key_args(ap, "AKIDFAKECLOUDWATCH", "fake-secret-key-for-tests")
    ap.add_argument("--no-store", action="store_true")
    a = ap.parse_args()
    S = State(a.region, awsfake.creds_of(a))
    S.store = not a.no_store
    awsfake.serve(Handler)


if __name__ == "__main__":
    main()
