"""What slipway's fakes of AWS services share (Python standard library only):
the HTTP handler base, the /_fake/ control channel, fault injection, error
documents in the JSON and the Query (XML) protocols, the credential options
and the server loop that prints its port.

Each fake (sqs.py, ecr.py, sts.py, autoscaling.py, cloudwatch.py, imds.py)
keeps its own wire format, operations and control commands; only the
plumbing lives here, so a fix to fault handling or the server loop reaches
every fake at once. Signatures are checked by awssig.py.

    class Handler(awsfake.Handler):
        server_version = "fake-x"
        def handle_any(self, method): ...
    awsfake.serve(Handler, watch=True)   # prints the port, serves forever
"""
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from awssig import AwsError, http_date  # noqa: E402

ANY = object()      # Faults.take: match every target


# ---- faults ----

class Faults:
    """Injected faults, as POST /_fake/fault gives them: {"kind", "count" (uses,
    default 1) or "seconds" (for that long), "target" (an operation; None or
    "*": every one) and filters (queue, group, ...)}. Shares the fake's lock."""

    def __init__(self, lock, kinds, name_unknown=True):
        self.lock = lock
        self.kinds = kinds
        self.name_unknown = name_unknown
        self.items = []         # read it with the lock held

    def add(self, f, default_target=None):
        kind = f.get("kind")
        if kind not in self.kinds:
            raise ValueError(f"unknown fault {kind}" if self.name_unknown else "unknown fault")
        f["count"] = int(f.get("count") or 1)
        f["until"] = time.time() + float(f["seconds"]) if f.get("seconds") else None
        if default_target is not None:
            f.setdefault("target", default_target)
        with self.lock:
            self.items.append(f)

    def clear(self):
        with self.lock:
            self.items.clear()

    def take(self, target=ANY, **match):
        """The first live fault for target (and each filter the fault names),
        one use consumed; or None."""
        now = time.time()
        with self.lock:
            for f in list(self.items):
                if f.get("until") is not None and now > f["until"]:
                    self.items.remove(f)
                    continue
                if target is not ANY and f.get("target") not in (None, "*", target):
                    continue
                if any(f.get(k) and f[k] != v for k, v in match.items()):
                    continue
                if f.get("until") is None:
                    f["count"] -= 1
                    if f["count"] <= 0:
                        self.items.remove(f)
                return dict(f)
        return None


def skew_fault(verifier, f):
    """"skew": the fake's clock moves by offset_s seconds."""
    verifier.offset_ms = int(float(f.get("offset_s", 0)) * 1000)
    return {"ok": True}


def token_fault(verifier, f, one=True):
    """"expired_token": the session tokens in use expire; the answer names the new ones."""
    out = {"ok": True, "new_tokens": verifier.expire_token(f.get("new_token"))}
    if one:
        out["new_token"] = next(iter(out["new_tokens"].values()), None)
    return out


def fault_control(method, path, body, faults, verifier, special=None, one_token=True,
                  skew=True):
    """POST /_fake/fault and POST /_fake/clear as most fakes take them: "skew"
    and "expired_token" act on the verifier, special[kind](f) answers a kind
    of the fake's own, every other kind goes to faults; clear drops every
    fault and the clock offset. None: not one of these requests."""
    if method == "POST" and path == "/_fake/fault":
        f = json.loads(body or b"{}")
        kind = f.get("kind")
        if skew and kind == "skew":
            return skew_fault(verifier, f)
        if kind == "expired_token":
            return token_fault(verifier, f, one_token)
        if special and kind in special:
            return special[kind](f)
        faults.add(f)
        return {"ok": True}
    if method == "POST" and path == "/_fake/clear":
        faults.clear()
        verifier.offset_ms = 0
        return {"ok": True}
    return None


def bump(lock, counts, key):
    with lock:
        counts[key] = counts.get(key, 0) + 1


# ---- Query protocol (XML) documents ----

def xml_error(ns, e, request_id):
    kind = "Sender" if e.status < 500 else "Receiver"
    return (f'<ErrorResponse xmlns="{ns}">\n  <Error>\n    <Type>{kind}</Type>\n'
            f'    <Code>{escape(e.code)}</Code>\n    <Message>{escape(e.message)}</Message>\n'
            f'  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n')


def xml_answer(ns, op, result, request_id):
    """<opResponse> around result (its own lines) and the ResponseMetadata."""
    return (f'<{op}Response xmlns="{ns}">\n{result}'
            f'  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n'
            f'  </ResponseMetadata>\n</{op}Response>\n')


# ---- the handler ----

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    json_type = "application/json"          # the default answer type of send_json
    control_type = "application/json"       # the type of /_fake/ answers

    def log_message(self, fmt, *args):
        pass

    def fake_now_ms(self):
        """The fake's clock for the Date header (None: the real one)."""
        return None

    def date_time_string(self, timestamp=None):
        # The Date header shows the fake's clock (moved on purpose by the "skew"
        # fault): clients correct their offset from it.
        now = self.fake_now_ms()
        if now is None:
            return super().date_time_string(timestamp)
        return http_date(now if timestamp is None else int(timestamp * 1000))

    def request_id(self):
        return "%032x" % time.time_ns()

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, status, body, ctype, extra=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", self.request_id())
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, doc, extra=None, ctype=None):
        self.send(status, json.dumps(doc), ctype or self.json_type, extra)

    def send_json_error(self, e, type_name=None):
        """The JSON protocols' error: {"__type", "message"} and x-amzn-ErrorType."""
        extra = {"x-amzn-ErrorType": e.code}
        extra.update(e.headers)
        self.send_json(e.status, {"__type": type_name or e.code, "message": e.message}, extra)

    def serve_control(self, method, url, body, control):
        """Answers a /_fake/ request with control(method, path, query, body)
        (KeyError, ValueError: 400); False when it is no such request."""
        if not url.path.startswith("/_fake/"):
            return False
        try:
            self.send_json(200, control(method, url.path, url.query, body),
                           ctype=self.control_type)
        except (KeyError, ValueError) as e:
            self.send_json(400, {"error": str(e)}, ctype=self.control_type)
        return True

    def json_target(self, prefix):
        """(X-Amz-Target, the operation it names under prefix or "")."""
        target = self.headers.get("X-Amz-Target") or ""
        return target, (target[len(prefix):] if target.startswith(prefix) else "")

    def json_call(self, method, url, body, verifier, target, op, known, path_status=404):
        """Checks a JSON-protocol call (POST /, signature, known operation,
        Content-Type json_type, a JSON object): (access key, document)."""
        if method != "POST" or url.path != "/":
            raise AwsError(path_status, "UnknownOperationException", "Unknown operation")
        akid = verifier.verify(method, url.path, url.query, list(self.headers.items()), body)
        if op not in known:
            raise AwsError(400, "UnknownOperationException", f"Unknown operation {target}")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != self.json_type:
            raise AwsError(400, "SerializationException", f"Unexpected content type {ctype!r}")
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AwsError(400, "SerializationException",
                           "Start of structure or map found where not expected.")
        if not isinstance(doc, dict):
            raise AwsError(400, "SerializationException", "Expected an object")
        return akid, doc

    def apply_fault(self, fault, errors, counted=None):
        """Acts on a fault taken for this request: raises the AwsError(status,
        code, message) errors gives its kind, drops the connection (True: the
        request is over) or sleeps ("slow"); other kinds are the caller's.
        counted: (lock, counts) that get "fault:<kind>"."""
        if not fault:
            return False
        k = fault["kind"]
        if counted:
            bump(counted[0], counted[1], "fault:" + k)
        if k in errors:
            raise AwsError(*errors[k])
        if k == "drop":
            self.drop()
            return True
        if k == "slow":
            time.sleep(float(fault.get("ms", 2000)) / 1000.0)
        return False


class JsonHandler(Handler):
    """A service of the AWS JSON protocol (X-Amz-Target, a JSON object in and
    out). A subclass sets target_prefix, json_type, fault_errors, known_ops
    and path_status (the status of a call that is not POST /) and defines
    state() (with lock, verifier, faults, requests, errors), control (the
    /_fake/ answers), call(op, akid, doc, fault) (the answer document) and
    may define take_fault(op, doc) (which faults hit) and send_error_doc(e)."""
    target_prefix = ""
    fault_errors = {}
    known_ops = ()
    path_status = 404

    def take_fault(self, op, doc):
        return self.state().faults.take(op)

    def send_error_doc(self, e):
        st = self.state()
        bump(st.lock, st.errors, e.code)
        self.send_json_error(e)

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if self.serve_control(method, url, body, self.control):
            return
        st = self.state()
        target, op = self.json_target(self.target_prefix)
        bump(st.lock, st.requests, op or target)
        try:
            akid, doc = self.json_call(method, url, body, st.verifier, target, op,
                                       self.known_ops, self.path_status)
            fault = self.take_fault(op, doc)
            if self.apply_fault(fault, self.fault_errors, (st.lock, st.errors)):
                return
            out = self.call(op, akid, doc, fault)
            if fault and fault["kind"] == "drop_after":
                self.drop()
                return
            self.send_json(200, out)
        except AwsError as e:
            self.send_error_doc(e)


# ---- command line and server loop ----

def add_key_args(ap, access_key, secret_key, more_keys=False):
    """--region, --access-key, --secret-key, --token (and --key AKID:SECRET[:TOKEN]...)."""
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--access-key", default=access_key)
    ap.add_argument("--secret-key", default=secret_key)
    ap.add_argument("--token", default=None)
    if more_keys:
        ap.add_argument("--key", action="append", default=[],
                        help="another identity: AKID:SECRET[:TOKEN] (repeatable)")


def creds_of(a):
    """The Verifier's creds from add_key_args' options."""
    creds = {a.access_key: {"secret": a.secret_key, "token": a.token}}
    for k in getattr(a, "key", None) or []:
        parts = k.split(":", 2)
        creds[parts[0]] = {"secret": parts[1], "token": parts[2] if len(parts) > 2 else None}
    return creds


def watch_parent(parent):
    """Exits when stdin closes or the parent is gone (the test died)."""
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


def serve(handler, port=0, watch=False, backlog=None, on_bound=None):
    """Binds 127.0.0.1:port, calls on_bound(port), prints the port on stdout's
    first line, optionally exits with stdin or the parent (watch), serves."""
    class Server(ThreadingHTTPServer):
        daemon_threads = True
    if backlog:
        Server.request_queue_size = backlog
    srv = Server(("127.0.0.1", port), handler)
    if on_bound:
        on_bound(srv.server_address[1])
    print(srv.server_address[1], flush=True)
    if watch:
        watch_parent(os.getppid())
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
