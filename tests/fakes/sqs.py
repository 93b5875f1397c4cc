#!/usr/bin/env python3
"""A fake of Amazon SQS for slipway's tests (Python standard library only).

It speaks the AWS JSON 1.0 protocol SQS uses: POST / with
`X-Amz-Target: AmazonSQS.<Action>` and `Content-Type:
application/x-amz-json-1.0`, for CreateQueue, GetQueueUrl, DeleteQueue,
ListQueues, TagQueue, UntagQueue, ListQueueTags, GetQueueAttributes,
SendMessage, SendMessageBatch, ReceiveMessage, ChangeMessageVisibility,
DeleteMessage and PurgeQueue. Errors come as SQS sends them: HTTP 400/403/5xx
with {"__type": "com.amazonaws.sqs#<Name>", "message": ...} and the
`x-amzn-query-error: <Query code>;Sender|Receiver` header (QueueDoesNotExist
is AWS.SimpleQueueService.NonExistentQueue there, and so on).

Every request must carry a valid SigV4 signature (service "sqs"), checked by
awssig.py independently of slipway's signer.

Semantics kept from the real service (standard queues):
  - queue names 1..80 of [A-Za-z0-9_-]; CreateQueue of an existing name with
    the same attributes answers its URL, with other attributes
    QueueNameExists (QueueAlreadyExists); a name deleted less than 60 s ago
    (--deleted-recently-s) is QueueDeletedRecently; tags given at creation;
  - messages: a body of #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF
    up to MaximumMessageSize (262,144 by default); MD5OfMessageBody/MD5OfBody;
    DelaySeconds; retention (MessageRetentionPeriod);
  - SendMessageBatch: 1..10 entries (EmptyBatchRequest,
    TooManyEntriesInBatchRequest), distinct ids (BatchEntryIdsNotDistinct) of
    [A-Za-z0-9_-]{1,80} (InvalidBatchEntryId), at most 262,144 bytes of bodies
    (BatchRequestTooLong); a bad entry is reported in Failed (SenderFault true)
    while the others are sent;
  - ReceiveMessage: MaxNumberOfMessages 1..10, WaitTimeSeconds 0..20 (long
    polling: the answer comes as soon as a message is visible), the
    queue's or the request's VisibilityTimeout; each receive gives a new
    receipt handle and counts ApproximateReceiveCount; system attributes as
    asked (MessageSystemAttributeNames or AttributeNames, "All" too);
  - ChangeMessageVisibility needs the latest receipt handle of a message in
    flight (ReceiptHandleIsInvalid, MessageNotInflight), 0..43,200 s and at
    most 12 hours after the first receive; DeleteMessage with the latest
    handle deletes, an older handle of the same message succeeds without
    deleting (as SQS documents), an unknown one is ReceiptHandleIsInvalid.

Control (unsigned, under /_fake/):
  POST /_fake/fault   {"kind": K, "count": N, "seconds": S, "target": ACTION, "queue": NAME}
        throttle       400 RequestThrottled
        throttle_exc   400 ThrottlingException
        error500       500 InternalFailure
        error503       503 ServiceUnavailable
        drop           close the connection without an answer, before acting
        drop_after     act, then close without an answer
        slow           answer after "ms" milliseconds
        entry_fail     SendMessageBatch: the first "entries" (default 1) entries
                       fail with InternalError, SenderFault false (not sent)
        bad_md5        the answer's MD5 of the first message/entry is wrong
        expired_token  the session token in use expires now: requests carrying
                       it get 403 ExpiredToken; the answer names the new token
                       to give the client (environment or credentials file)
        skew           the fake's clock moves by "offset_s" seconds
      count: matching requests it hits (default 1); seconds: instead, for that
      long; target: an action (default: every action); queue: only requests
      naming that queue.
  POST /_fake/clear    drops every fault and the clock offset
  POST /_fake/config   {"deleted_recently_s": N}
  GET  /_fake/stats    requests per action, errors per code, signatures verified
  GET  /_fake/queues   every queue: url, attributes, tags, counts
  GET  /_fake/messages?queue=NAME   every message with its state
  GET  /_fake/calls?action=A&queue=NAME   recent calls (action, queue, time,
                       VisibilityTimeout asked, receipt handle used)

Usage: sqs.py [--region R] [--account ID] [--access-key K --secret-key S [--token T]]
              [--key AKID:SECRET[:TOKEN]]... [--deleted-recently-s N]
Binds 127.0.0.1:0 (or --port) and prints its port on the first line of stdout.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402
from awssig import CODES_QUERY, AwsError, Verifier  # noqa: E402

TARGET_PREFIX = "AmazonSQS."
CONTENT_TYPE = "application/x-amz-json-1.0"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")
BATCH_MAX = 262144
VISIBILITY_MAX = 43200
CALLS_KEPT = 20000

# Error name -> (HTTP status, Query code, fault side)
ERRORS = {
    "QueueDoesNotExist": (400, "AWS.SimpleQueueService.NonExistentQueue", "Sender"),
    "QueueDeletedRecently": (400, "AWS.SimpleQueueService.QueueDeletedRecently", "Sender"),
    "QueueNameExists": (400, "QueueAlreadyExists", "Sender"),
    "InvalidAttributeName": (400, "InvalidAttributeName", "Sender"),
    "InvalidAttributeValue": (400, "InvalidAttributeValue", "Sender"),
    "InvalidParameterValueException": (400, "InvalidParameterValue", "Sender"),
    "MissingRequiredParameterException": (400, "MissingParameter", "Sender"),
    "EmptyBatchRequest": (400, "AWS.SimpleQueueService.EmptyBatchRequest", "Sender"),
    "TooManyEntriesInBatchRequest": (400, "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                                     "Sender"),
    "BatchEntryIdsNotDistinct": (400, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                                 "Sender"),
    "BatchRequestTooLong": (400, "AWS.SimpleQueueService.BatchRequestTooLong", "Sender"),
    "InvalidBatchEntryId": (400, "AWS.SimpleQueueService.InvalidBatchEntryId", "Sender"),
    "InvalidMessageContents": (400, "InvalidMessageContents", "Sender"),
    "ReceiptHandleIsInvalid": (400, "ReceiptHandleIsInvalid", "Sender"),
    "MessageNotInflight": (400, "AWS.SimpleQueueService.MessageNotInflight", "Sender"),
    "RequestThrottled": (400, "RequestThrottled", "Sender"),
    "ThrottlingException": (400, "ThrottlingException", "Sender"),
    "InternalFailure": (500, "InternalFailure", "Receiver"),
    "ServiceUnavailable": (503, "ServiceUnavailable", "Receiver"),
    "UnknownOperationException": (400, "InvalidAction", "Sender"),
    "SerializationException": (400, "SerializationException", "Sender"),
    "MissingAuthenticationToken": (403, "MissingAuthenticationToken", "Sender"),
    "IncompleteSignature": (400, "IncompleteSignature", "Sender"),
    "InvalidClientTokenId": (403, "InvalidClientTokenId", "Sender"),
    "SignatureDoesNotMatch": (403, "SignatureDoesNotMatch", "Sender"),
    "ExpiredToken": (403, "ExpiredToken", "Sender"),
}

ATTR_DEFAULTS = {
    "VisibilityTimeout": "30",
    "MaximumMessageSize": "262144",
    "MessageRetentionPeriod": "345600",
    "DelaySeconds": "0",
    "ReceiveMessageWaitTimeSeconds": "0",
    "SqsManagedSseEnabled": "true",
}
ATTR_RANGES = {
    "VisibilityTimeout": (0, 43200),
    "MaximumMessageSize": (1024, 262144),
    "MessageRetentionPeriod": (60, 1209600),
    "DelaySeconds": (0, 900),
    "ReceiveMessageWaitTimeSeconds": (0, 20),
}
ATTR_BOOLS = ("SqsManagedSseEnabled",)
ATTR_TEXT = ("Policy", "RedrivePolicy", "RedriveAllowPolicy", "KmsMasterKeyId",
             "KmsDataKeyReusePeriodSeconds")
SYSTEM_ATTRS = ("SenderId", "SentTimestamp", "ApproximateReceiveCount",
                "ApproximateFirstReceiveTimestamp")
FAULT_ERRORS = {
    "throttle": (400, "RequestThrottled", "Request is throttled."),
    "throttle_exc": (400, "ThrottlingException", "Rate exceeded"),
    "error500": (500, "InternalFailure", "The request processing has failed because of an "
                 "unknown error, exception or failure."),
    "error503": (503, "ServiceUnavailable", "Service is unable to handle request."),
}


def err(name, message):
    status = ERRORS.get(name, (400,))[0]
    return AwsError(status, name, message)


def valid_body(s):
    for ch in s:
        o = ord(ch)
        if not (o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or
                0x10000 <= o <= 0x10FFFF):
            return False
    return True


def md5(s):
    return hashlib.md5(s.encode("utf-8")).hexdigest()


class Message:
    __slots__ = ("id", "body", "md5", "sent_ms", "visible_at", "receive_count", "first_receive",
                 "receipt", "receipts", "deleted", "sender", "expires_at")

    def __init__(self, body, sender, delay_s, retention_s):
        now = time.time()
        self.id = "%08x-%04x-%04x-%04x-%012x" % tuple(
            int.from_bytes(os.urandom(n), "big") for n in (4, 2, 2, 2, 6))
        self.body = body
        self.md5 = md5(body)
        self.sent_ms = int(now * 1000)
        self.visible_at = now + delay_s
        self.receive_count = 0
        self.first_receive = None
        self.receipt = None           # the latest receipt handle
        self.receipts = set()         # every handle ever given out
        self.deleted = False
        self.sender = sender
        self.expires_at = now + retention_s


class Queue:
    def __init__(self, name, url, attrs, tags):
        self.name = name
        self.url = url
        self.attrs = attrs
        self.tags = dict(tags)
        self.messages = []
        self.created = int(time.time())
        self.cond = threading.Condition(S.lock)
        self.deleted = False
        self.gone_receipts = set()    # handles of deleted messages: deleting again is fine

    def attr_int(self, name):
        return int(self.attrs.get(name, ATTR_DEFAULTS.get(name, "0")))


class State:
    def __init__(self, region, account, creds):
        self.lock = threading.RLock()
        self.region = region
        self.account = account
        self.verifier = Verifier(region, "sqs", creds, codes=CODES_QUERY)
        self.queues = {}                # name -> Queue
        self.deleted_at = {}            # name -> time.time() of its DeleteQueue
        self.deleted_recently_s = 60.0
        self.faults = awsfake.Faults(self.lock, ("throttle", "throttle_exc", "error500",
                                                 "error503", "drop", "drop_after", "slow",
                                                 "entry_fail", "bad_md5"))
        self.requests = {}
        self.errors = {}
        self.calls = []                 # recent calls, for assertions
        self.base_url = ""

    def now_ms(self):
        return self.verifier.now_ms()


S = None


# ---- request helpers ----

def need_str(doc, key):
    v = doc.get(key)
    if v is None:
        raise err("MissingRequiredParameterException",
                  f"The request must contain the parameter {key}.")
    if not isinstance(v, str):
        raise AwsError(400, "SerializationException", f"{key}: expected a string")
    return v


def opt_int(doc, key, lo, hi, default):
    v = doc.get(key)
    if v is None:
        return default
    if type(v) is not int:
        raise AwsError(400, "SerializationException", f"{key}: expected an integer")
    if v < lo or v > hi:
        raise err("InvalidParameterValueException",
                  f"Value {v} for parameter {key} is invalid. Reason: must be between "
                  f"{lo} and {hi}.")
    return v


def queue_name_of_url(url):
    """The queue a QueueUrl names (any host; path /<account>/<name>), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    segs = [s for s in parts.path.split("/") if s]
    if len(segs) != 2 or segs[0] != S.account:
        return None
    return segs[1]


def get_queue(doc):
    url = need_str(doc, "QueueUrl")
    name = queue_name_of_url(url)
    q = S.queues.get(name) if name else None
    if q is None:
        raise err("QueueDoesNotExist", "The specified queue does not exist.")
    return q


def check_attrs(attrs):
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise AwsError(400, "SerializationException", "Attributes: expected a map")
    out = {}
    for k, v in attrs.items():
        if not isinstance(v, str):
            raise AwsError(400, "SerializationException", f"Attributes.{k}: expected a string")
        if k in ATTR_RANGES:
            lo, hi = ATTR_RANGES[k]
            if not re.fullmatch(r"\d+", v) or not lo <= int(v) <= hi:
                raise err("InvalidAttributeValue", f"Invalid value for the parameter {k}.")
        elif k in ATTR_BOOLS:
            if v not in ("true", "false"):
                raise err("InvalidAttributeValue", f"Invalid value for the parameter {k}.")
        elif k not in ATTR_TEXT:
            raise err("InvalidAttributeName", f"Unknown Attribute {k}.")
        out[k] = v
    return out


def check_tags(tags, key="tags"):
    if tags is None:
        return {}
    if not isinstance(tags, dict) or len(tags) > 50:
        raise err("InvalidParameterValueException", f"{key}: at most 50 tags")
    for k, v in tags.items():
        if not isinstance(v, str) or not k or len(k) > 128 or len(v) > 256:
            raise err("InvalidParameterValueException", f"Tag {k!r} is invalid.")
    return dict(tags)


def note_call(action, queue, **extra):
    rec = {"action": action, "queue": queue, "t": time.time()}
    rec.update(extra)
    S.calls.append(rec)
    if len(S.calls) > CALLS_KEPT:
        del S.calls[:CALLS_KEPT // 10]


# ---- queue operations ----

def op_create_queue(doc, ctx):
    name = need_str(doc, "QueueName")
    if not NAME_RE.fullmatch(name):
        raise err("InvalidParameterValueException",
                  "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 "
                  "in length")
    attrs = check_attrs(doc.get("Attributes"))
    tags = check_tags(doc.get("tags"))
    with S.lock:
        gone = S.deleted_at.get(name)
        if gone is not None and time.time() - gone < S.deleted_recently_s:
            raise err("QueueDeletedRecently", "You must wait 60 seconds after deleting a "
                      "queue before you can create another queue with the same name.")
        q = S.queues.get(name)
        if q is not None:
            # Same attributes (those given): the existing URL; else a conflict.
            for k, v in attrs.items():
                if q.attrs.get(k, ATTR_DEFAULTS.get(k)) != v:
                    raise err("QueueNameExists", "A queue already exists with the same name and "
                              "a different value for attribute " + k)
            note_call("CreateQueue", name, existed=True)
            return {"QueueUrl": q.url}
        full = dict(ATTR_DEFAULTS)
        full.update(attrs)
        q = Queue(name, f"{S.base_url}/{S.account}/{name}", full, tags)
        S.queues[name] = q
        note_call("CreateQueue", name, existed=False)
    return {"QueueUrl": q.url}


def op_get_queue_url(doc, ctx):
    name = need_str(doc, "QueueName")
    with S.lock:
        q = S.queues.get(name)
        if q is None:
            raise err("QueueDoesNotExist", "The specified queue does not exist.")
        return {"QueueUrl": q.url}


def op_delete_queue(doc, ctx):
    with S.lock:
        q = get_queue(doc)
        q.deleted = True
        del S.queues[q.name]
        S.deleted_at[q.name] = time.time()
        q.cond.notify_all()
        note_call("DeleteQueue", q.name)
    return {}


def op_list_queues(doc, ctx):
    prefix = doc.get("QueueNamePrefix") or ""
    if not isinstance(prefix, str):
        raise AwsError(400, "SerializationException", "QueueNamePrefix: expected a string")
    max_results = opt_int(doc, "MaxResults", 1, 1000, None)
    token = doc.get("NextToken")
    after = ""
    if token is not None:
        if max_results is None:
            raise err("InvalidParameterValueException",
                      "MaxResults is a mandatory parameter when you provide a value for "
                      "NextToken.")
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise err("InvalidParameterValueException", "Invalid NextToken value.")
    with S.lock:
        names = sorted(n for n in S.queues if n.startswith(prefix) and n > after)
        urls = {n: S.queues[n].url for n in names}
    out = {}
    if max_results is None:
        page = names[:1000]
    else:
        page = names[:max_results]
        if len(names) > max_results:
            out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
    if page:
        out["QueueUrls"] = [urls[n] for n in page]
    return out


def op_tag_queue(doc, ctx):
    tags = check_tags(doc.get("Tags"), "Tags")
    with S.lock:
        q = get_queue(doc)
        if len(set(q.tags) | set(tags)) > 50:
            raise err("InvalidParameterValueException", "Too many tags added for queue")
        q.tags.update(tags)
    return {}


def op_untag_queue(doc, ctx):
    keys = doc.get("TagKeys") or []
    with S.lock:
        q = get_queue(doc)
        for k in keys:
            q.tags.pop(k, None)
    return {}


def op_list_queue_tags(doc, ctx):
    with S.lock:
        q = get_queue(doc)
        return {"Tags": dict(q.tags)} if q.tags else {}


def op_get_queue_attributes(doc, ctx):
    with S.lock:
        q = get_queue(doc)
        now = time.time()
        live = [m for m in q.messages if not m.deleted]
        attrs = dict(q.attrs)
        attrs["ApproximateNumberOfMessages"] = str(sum(1 for m in live if m.visible_at <= now))
        attrs["ApproximateNumberOfMessagesNotVisible"] = str(
            sum(1 for m in live if m.visible_at > now and m.receive_count))
        attrs["QueueArn"] = f"arn:aws:sqs:{S.region}:{S.account}:{q.name}"
        attrs["CreatedTimestamp"] = str(q.created)
        names = doc.get("AttributeNames") or ["All"]
        if "All" not in names:
            attrs = {k: v for k, v in attrs.items() if k in names}
        return {"Attributes": attrs}


def op_purge_queue(doc, ctx):
    with S.lock:
        q = get_queue(doc)
        for m in q.messages:
            m.deleted = True
        q.messages = []
    return {}


# ---- message operations ----

def new_receipt(q, m):
    raw = json.dumps({"q": q.name, "m": m.id, "n": os.urandom(12).hex()})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def find_by_receipt(q, handle):
    """(message, is_latest) for a receipt handle of queue q; raises
    ReceiptHandleIsInvalid for a handle that is not one of ours."""
    try:
        pad = "=" * (-len(handle) % 4)
        doc = json.loads(base64.urlsafe_b64decode((handle + pad).encode()))
        qn, mid = doc["q"], doc["m"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise err("ReceiptHandleIsInvalid", f'The input receipt handle "{handle[:40]}" is not a '
                  "valid receipt handle.")
    if qn != q.name:
        raise err("ReceiptHandleIsInvalid", "The receipt handle belongs to another queue.")
    for m in q.messages:
        if m.id == mid:
            if handle not in m.receipts:
                break
            return m, handle == m.receipt
    raise err("ReceiptHandleIsInvalid", f'The input receipt handle "{handle[:40]}" is not a '
              "valid receipt handle.")


def put_message(q, body, delay, ctx):
    maxsize = q.attr_int("MaximumMessageSize")
    if not isinstance(body, str) or not body:
        return ("MissingRequiredParameterException", "The request must contain the parameter "
                "MessageBody.")
    if not valid_body(body):
        return ("InvalidMessageContents", "Invalid characters found.")
    if len(body.encode("utf-8")) > maxsize:
        return ("InvalidParameterValueException", f"One or more parameters are invalid. Reason: "
                f"Message must be shorter than {maxsize} bytes.")
    if delay is None:
        delay = q.attr_int("DelaySeconds")
    if type(delay) is not int or not 0 <= delay <= 900:
        return ("InvalidParameterValueException", "DelaySeconds must be 0..900")
    m = Message(body, ctx["akid"], delay, q.attr_int("MessageRetentionPeriod"))
    q.messages.append(m)
    q.cond.notify_all()
    return m


def op_send_message(doc, ctx):
    body = doc.get("MessageBody")
    with S.lock:
        q = get_queue(doc)
        r = put_message(q, body, doc.get("DelaySeconds"), ctx)
        if isinstance(r, tuple):
            raise err(r[0], r[1])
        note_call("SendMessage", q.name, message=r.id)
        out = {"MessageId": r.id, "MD5OfMessageBody": r.md5}
    if ctx["fault"] and ctx["fault"]["kind"] == "bad_md5":
        out["MD5OfMessageBody"] = "0" * 32
    return out


def op_send_message_batch(doc, ctx):
    entries = doc.get("Entries")
    if entries is None or entries == []:
        raise err("EmptyBatchRequest", "There should be at least one SendMessageBatchRequestEntry "
                  "in the request.")
    if not isinstance(entries, list):
        raise AwsError(400, "SerializationException", "Entries: expected a list")
    if len(entries) > 10:
        raise err("TooManyEntriesInBatchRequest", f"Maximum number of entries per request are "
                  f"10. You have sent {len(entries)}.")
    ids = []
    total = 0
    for e in entries:
        if not isinstance(e, dict):
            raise AwsError(400, "SerializationException", "Entries: expected objects")
        i = e.get("Id")
        if not isinstance(i, str) or not ID_RE.fullmatch(i):
            raise err("InvalidBatchEntryId", "A batch entry id can only contain alphanumeric "
                      "characters, hyphens and underscores. It can be at most 80 letters long.")
        ids.append(i)
        b = e.get("MessageBody")
        total += len(b.encode("utf-8")) if isinstance(b, str) else 0
    if len(set(ids)) != len(ids):
        raise err("BatchEntryIdsNotDistinct", "Two or more batch entries in the request have "
                  "the same Id.")
    if total > BATCH_MAX:
        raise err("BatchRequestTooLong", f"Batch requests cannot be longer than {BATCH_MAX} "
                  f"bytes. You have sent {total} bytes.")
    fault = ctx["fault"]
    fail_first = int(fault.get("entries", 1)) if fault and fault["kind"] == "entry_fail" else 0
    ok, failed = [], []
    with S.lock:
        q = get_queue(doc)
        for n, e in enumerate(entries):
            if n < fail_first:
                failed.append({"Id": e["Id"], "SenderFault": False, "Code": "InternalError",
                               "Message": "We encountered an internal error. Please try again."})
                continue
            r = put_message(q, e.get("MessageBody"), e.get("DelaySeconds"), ctx)
            if isinstance(r, tuple):
                failed.append({"Id": e["Id"], "SenderFault": True, "Code": ERRORS[r[0]][1],
                               "Message": r[1]})
                continue
            note_call("SendMessageBatch", q.name, message=r.id, entry=e["Id"])
            ok.append({"Id": e["Id"], "MessageId": r.id, "MD5OfMessageBody": r.md5})
    if fault and fault["kind"] == "bad_md5" and ok:
        ok[0]["MD5OfMessageBody"] = "0" * 32
    return {"Successful": ok, "Failed": failed}


def attr_names(doc):
    names = set()
    for key in ("MessageSystemAttributeNames", "AttributeNames"):
        v = doc.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise AwsError(400, "SerializationException", f"{key}: expected strings")
        names.update(v)
    if "All" in names:
        return set(SYSTEM_ATTRS)
    return names & set(SYSTEM_ATTRS)


def op_receive_message(doc, ctx):
    max_n = opt_int(doc, "MaxNumberOfMessages", 1, 10, 1)
    vis = opt_int(doc, "VisibilityTimeout", 0, VISIBILITY_MAX, None)
    names = attr_names(doc)
    with S.lock:
        q = get_queue(doc)
        wait = opt_int(doc, "WaitTimeSeconds", 0, 20, q.attr_int("ReceiveMessageWaitTimeSeconds"))
        if vis is None:
            vis = q.attr_int("VisibilityTimeout")
        deadline = time.time() + wait
        while True:
            now = time.time()
            q.messages = [m for m in q.messages if not m.deleted and m.expires_at > now]
            ready = [m for m in q.messages if m.visible_at <= now][:max_n]
            if ready or now >= deadline or q.deleted:
                break
            nxt = min([m.visible_at for m in q.messages if m.visible_at > now] or [deadline])
            q.cond.wait(max(0.005, min(deadline, nxt) - now))
        if q.deleted:
            raise err("QueueDoesNotExist", "The specified queue does not exist.")
        out = []
        for m in ready:
            m.receive_count += 1
            if m.first_receive is None:
                m.first_receive = now
            m.visible_at = now + vis
            m.receipt = new_receipt(q, m)
            m.receipts.add(m.receipt)
            d = {"MessageId": m.id, "ReceiptHandle": m.receipt, "MD5OfBody": m.md5,
                 "Body": m.body}
            attrs = {}
            if "SenderId" in names:
                attrs["SenderId"] = m.sender
            if "SentTimestamp" in names:
                attrs["SentTimestamp"] = str(m.sent_ms)
            if "ApproximateReceiveCount" in names:
                attrs["ApproximateReceiveCount"] = str(m.receive_count)
            if "ApproximateFirstReceiveTimestamp" in names:
                attrs["ApproximateFirstReceiveTimestamp"] = str(int(m.first_receive * 1000))
            if attrs:
                d["Attributes"] = attrs
            out.append(d)
            note_call("ReceiveMessage", q.name, message=m.id, receive_count=m.receive_count,
                      visibility=vis)
    if ctx["fault"] and ctx["fault"]["kind"] == "bad_md5" and out:
        out[0]["MD5OfBody"] = "0" * 32
    return {"Messages": out} if out else {}


def op_change_message_visibility(doc, ctx):
    handle = need_str(doc, "ReceiptHandle")
    vis = doc.get("VisibilityTimeout")
    if type(vis) is not int:
        raise err("MissingRequiredParameterException", "The request must contain the parameter "
                  "VisibilityTimeout.")
    with S.lock:
        q = get_queue(doc)
        m, latest = find_by_receipt(q, handle)
        now = time.time()
        if not 0 <= vis <= VISIBILITY_MAX:
            raise err("InvalidParameterValueException", f"Value {vis} for parameter "
                      f"VisibilityTimeout is invalid. Reason: must be between 0 and 43200.")
        if m.deleted or not latest:
            raise err("ReceiptHandleIsInvalid", "The receipt handle has expired.")
        if m.visible_at <= now:
            raise err("MessageNotInflight", "Message does not exist or is not available for "
                      "visibility timeout change.")
        if now + vis - m.first_receive > VISIBILITY_MAX:
            raise err("InvalidParameterValueException", "Total VisibilityTimeout for the message "
                      "is beyond the limit [43200 seconds]")
        m.visible_at = now + vis
        if vis == 0:
            q.cond.notify_all()
        note_call("ChangeMessageVisibility", q.name, message=m.id, visibility=vis)
    return {}


def op_delete_message(doc, ctx):
    handle = need_str(doc, "ReceiptHandle")
    with S.lock:
        q = get_queue(doc)
        if handle in q.gone_receipts:
            note_call("DeleteMessage", q.name, message=None, deleted=False)
            return {}
        m, latest = find_by_receipt(q, handle)
        if latest and not m.deleted:
            m.deleted = True
            q.messages = [x for x in q.messages if x is not m]
            if len(q.gone_receipts) > 100000:
                q.gone_receipts.clear()
            q.gone_receipts.update(m.receipts)
        note_call("DeleteMessage", q.name, message=m.id, deleted=latest)
    return {}


OPS = {
    "CreateQueue": op_create_queue,
    "GetQueueUrl": op_get_queue_url,
    "DeleteQueue": op_delete_queue,
    "ListQueues": op_list_queues,
    "TagQueue": op_tag_queue,
    "UntagQueue": op_untag_queue,
    "ListQueueTags": op_list_queue_tags,
    "GetQueueAttributes": op_get_queue_attributes,
    "PurgeQueue": op_purge_queue,
    "SendMessage": op_send_message,
    "SendMessageBatch": op_send_message_batch,
    "ReceiveMessage": op_receive_message,
    "ChangeMessageVisibility": op_change_message_visibility,
    "DeleteMessage": op_delete_message,
}


# ---- control ----

def message_state(m, now):
    if m.deleted:
        return "deleted"
    if m.visible_at > now:
        return "inflight" if m.receive_count else "delayed"
    return "visible"


def control(method, path, query, body):
    done = awsfake.fault_control(method, path, body, S.faults, S.verifier)
    if done is not None:
        return done
    if method == "POST" and path == "/_fake/config":
        f = json.loads(body or b"{}")
        with S.lock:
            if "deleted_recently_s" in f:
                S.deleted_recently_s = float(f["deleted_recently_s"])
        return {"ok": True}
    if method == "GET" and path == "/_fake/stats":
        with S.lock:
            return {"requests": dict(S.requests), "errors": dict(S.errors),
                    "verified": S.verifier.verified, "queues": len(S.queues),
                    "faults": [dict(f) for f in S.faults.items]}
    if method == "GET" and path == "/_fake/queues":
        now = time.time()
        with S.lock:
            out = []
            for q in sorted(S.queues.values(), key=lambda x: x.name):
                states = [message_state(m, now) for m in q.messages]
                out.append({"name": q.name, "url": q.url, "attributes": dict(q.attrs),
                            "tags": dict(q.tags), "messages": len(q.messages),
                            "visible": states.count("visible"),
                            "inflight": states.count("inflight"),
                            "delayed": states.count("delayed")})
            return {"queues": out, "deleted": sorted(S.deleted_at)}
    if method == "GET" and path == "/_fake/messages":
        qs = urllib.parse.parse_qs(query)
        name = qs.get("queue", [""])[0]
        now = time.time()
        with S.lock:
            q = S.queues.get(name)
            msgs = list(q.messages) if q else []
            return {"messages": [{"id": m.id, "body": m.body, "state": message_state(m, now),
                                  "receive_count": m.receive_count,
                                  "visible_in_s": max(0.0, m.visible_at - now)} for m in msgs]}
    if method == "GET" and path == "/_fake/calls":
        qs = urllib.parse.parse_qs(query)
        action = qs.get("action", [None])[0]
        queue = qs.get("queue", [None])[0]
        with S.lock:
            return {"calls": [c for c in S.calls if (action is None or c["action"] == action)
                              and (queue is None or c["queue"] == queue)]}
    raise KeyError(path)


class Handler(awsfake.JsonHandler):
    server_version = "fake-sqs"
    json_type = CONTENT_TYPE
    target_prefix = TARGET_PREFIX
    fault_errors = FAULT_ERRORS
    known_ops = OPS
    path_status = 400
    control = staticmethod(control)

    def state(self):
        return S

    def fake_now_ms(self):
        return S.now_ms()

    def send_error_doc(self, e):
        awsfake.bump(S.lock, S.errors, e.code)
        status, qcode, side = ERRORS.get(e.code, (e.status, e.code, "Sender"))
        extra = {"x-amzn-query-error": f"{qcode};{side}"}
        extra.update(e.headers)
        self.send_json(e.status or status, {"__type": "com.amazonaws.sqs#" + e.code,
                                            "message": e.message}, extra)

    def take_fault(self, op, doc):
        qname = doc.get("QueueName")
        if qname is None and isinstance(doc.get("QueueUrl"), str):
            qname = queue_name_of_url(doc["QueueUrl"])
        return S.faults.take(op, queue=qname)

    def call(self, op, akid, doc, fault):
        return OPS[op](doc, {"akid": akid, "fault": fault})


def main():
    global S
    ap = argparse.ArgumentParser()
    awsfake.add_key_args(ap, "AKIDFAKESQS", "fake-secret-key-for-sqs-tests", more_keys=True)
    ap.add_argument("--account", default="123456789012")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--deleted-recently-s", type=float, default=60.0)
    a = ap.parse_args()
    S = State(a.region, a.account, awsfake.creds_of(a))
    S.deleted_recently_s = a.deleted_recently_s

    def bound(port):
        S.base_url = f"http://127.0.0.1:{port}"
    # A thousand agents long-poll at once: a deep accept backlog.
    awsfake.serve(Handler, port=a.port, backlog=1024, on_bound=bound)


if __name__ == "__main__":
    main()
