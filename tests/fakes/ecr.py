#!/usr/bin/env python3
"""A fake of Amazon ECR's API for slipway's tests (Python standard library only).

It speaks the AWS JSON 1.1 protocol ECR uses: POST / with
`X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Action>` and
`Content-Type: application/x-amz-json-1.1`, for CreateRepository,
DescribeRepositories, DeleteRepository and GetAuthorizationToken. Errors come
as the service sends them: {"__type": "<Name>", "message": ...} with the
x-amzn-ErrorType header (RepositoryAlreadyExistsException,
RepositoryNotFoundException, InvalidParameterException, ServerException,
ThrottlingException, ...).

Every request must carry a valid SigV4 signature (signing name "ecr"),
checked by awssig.py independently of slipway's signer.

GetAuthorizationToken answers what ECR answers: authorizationToken is the
base64 of "AWS:<password>", expiresAt the expiry in epoch seconds (12 hours
by default, --token-ttl-s), proxyEndpoint the registry's URL. The registry
itself is not faked: --proxy-endpoint points at a real registry (the test
harness's), so images are pushed and pulled for real while the fake hands out
the credentials. Every password issued is remembered with its expiry and the
access key that asked, so a test can check that what reached Docker is a
live token of this fake (/_fake/check).

Control (unsigned, under /_fake/):
  POST /_fake/fault   {"kind": K, "count": N, "seconds": S, "target": ACTION}
        throttle       400 ThrottlingException
        error500       500 ServerException
        drop           close the connection without an answer
        slow           answer after "ms" milliseconds
        expired_token  the session token in use expires now (403
                       ExpiredTokenException); the answer names the new token
        skew           the fake's clock moves by "offset_s" seconds
        expire_registry_tokens   every registry password issued expires now
  POST /_fake/clear    drops every fault and the clock offset
  POST /_fake/config   {"token_ttl_s": N}
  GET  /_fake/stats    requests per action, errors per code, tokens issued
  GET  /_fake/repositories
  GET  /_fake/tokens   every registry password issued: expiry, who asked
  GET  /_fake/check?password=P   {"valid": bool, "expires_at": ...}

Usage: ecr.py --proxy-endpoint URL [--region R] [--account ID]
              [--access-key K --secret-key S [--token T]] [--key AKID:SECRET[:TOKEN]]...
Binds 127.0.0.1:0 and prints its port on the first line of stdout.
"""
import argparse
import base64
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from awssig import CODES_JSON, AwsError, Verifier, http_date  # noqa: E402

TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
CONTENT_TYPE = "application/x-amz-json-1.1"
NAME_RE = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
REGISTRY_RE = re.compile(r"[0-9]{12}")


class State:
    def __init__(self, region, account, creds, proxy_endpoint, ttl_s):
        self.lock = threading.Lock()
        self.region = region
        self.account = account
        self.verifier = Verifier(region, "ecr", creds, codes=CODES_JSON)
        self.proxy_endpoint = proxy_endpoint.rstrip("/")
        self.ttl_s = ttl_s
        self.repos = {}           # name -> dict
        self.tokens = {}          # password -> {"expires_at", "akid", "registry", "issued_at"}
        self.faults = []
        self.requests = {}
        self.errors = {}

    def now_ms(self):
        return self.verifier.now_ms()


S = None


def registry_host():
    return urllib.parse.urlsplit(S.proxy_endpoint).netloc


def take_fault(action):
    now = time.time()
    with S.lock:
        for f in list(S.faults):
            if f.get("until") is not None and now > f["until"]:
                S.faults.remove(f)
                continue
            want = f.get("target")
            if want not in (None, "*") and want != action:
                continue
            if f.get("until") is None:
                f["count"] -= 1
                if f["count"] <= 0:
                    S.faults.remove(f)
            return dict(f)
    return None


def repo_doc(r):
    return {"repositoryArn": r["arn"], "registryId": S.account, "repositoryName": r["name"],
            "repositoryUri": f"{registry_host()}/{r['name']}", "createdAt": r["created"],
            "imageTagMutability": r["mutability"],
            "imageScanningConfiguration": {"scanOnPush": r["scan"]},
            "encryptionConfiguration": {"encryptionType": "AES256"}}


def check_registry(doc, key="registryId"):
    rid = doc.get(key)
    if rid is not None and (not isinstance(rid, str) or not REGISTRY_RE.fullmatch(rid)):
        raise AwsError(400, "InvalidParameterException",
                       f"Invalid parameter at '{key}' failed to satisfy constraint: 'must "
                       f"satisfy regular expression '[0-9]{{12}}''")
    if rid is not None and rid != S.account:
        raise AwsError(400, "InvalidParameterException",
                       f"This operation cannot be performed on registry {rid}")


def op_create_repository(doc, akid):
    check_registry(doc)
    name = doc.get("repositoryName")
    if not isinstance(name, str) or not 2 <= len(name) <= 256 or not NAME_RE.fullmatch(name):
        raise AwsError(400, "InvalidParameterException",
                       "Invalid parameter at 'repositoryName' failed to satisfy constraint: "
                       "'must satisfy regular expression '(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*"
                       "[a-z0-9]+(?:[._-][a-z0-9]+)*''")
    tags = doc.get("tags") or []
    if not isinstance(tags, list) or len(tags) > 50 or not all(
            isinstance(t, dict) and isinstance(t.get("Key"), str) and
            isinstance(t.get("Value"), str) for t in tags):
        raise AwsError(400, "InvalidTagParameterException", "Invalid tags")
    mut = doc.get("imageTagMutability", "MUTABLE")
    if mut not in ("MUTABLE", "IMMUTABLE"):
        raise AwsError(400, "InvalidParameterException", "imageTagMutability")
    scan = bool((doc.get("imageScanningConfiguration") or {}).get("scanOnPush", False))
    with S.lock:
        if name in S.repos:
            raise AwsError(400, "RepositoryAlreadyExistsException",
                           f"The repository with name '{name}' already exists in the registry "
                           f"with id '{S.account}'")
        r = {"name": name, "arn": f"arn:aws:ecr:{S.region}:{S.account}:repository/{name}",
             "created": round(time.time(), 3), "mutability": mut, "scan": scan,
             "tags": {t["Key"]: t["Value"] for t in tags}}
        S.repos[name] = r
        return {"repository": repo_doc(r)}


def op_describe_repositories(doc, akid):
    check_registry(doc)
    names = doc.get("repositoryNames")
    max_results = doc.get("maxResults")
    token = doc.get("nextToken")
    with S.lock:
        if names is not None:
            if not isinstance(names, list) or not 1 <= len(names) <= 100:
                raise AwsError(400, "InvalidParameterException", "repositoryNames")
            for n in names:
                if n not in S.repos:
                    raise AwsError(400, "RepositoryNotFoundException",
                                   f"The repository with name '{n}' does not exist in the "
                                   f"registry with id '{S.account}'")
            return {"repositories": [repo_doc(S.repos[n]) for n in names]}
        all_names = sorted(S.repos)
        start = 0
        if token is not None:
            try:
                start = int(base64.b64decode(token).decode())
            except (ValueError, UnicodeDecodeError):
                raise AwsError(400, "InvalidParameterException", "Invalid nextToken")
        n = max_results if isinstance(max_results, int) and 1 <= max_results <= 1000 else 100
        page = all_names[start:start + n]
        out = {"repositories": [repo_doc(S.repos[x]) for x in page]}
        if start + n < len(all_names):
            out["nextToken"] = base64.b64encode(str(start + n).encode()).decode()
        return out


def op_delete_repository(doc, akid):
    check_registry(doc)
    name = doc.get("repositoryName")
    with S.lock:
        r = S.repos.pop(name, None)
        if r is None:
            raise AwsError(400, "RepositoryNotFoundException",
                           f"The repository with name '{name}' does not exist in the registry "
                           f"with id '{S.account}'")
        return {"repository": repo_doc(r)}


def op_get_authorization_token(doc, akid):
    ids = doc.get("registryIds")
    if ids is not None:
        if not isinstance(ids, list) or not 1 <= len(ids) <= 10:
            raise AwsError(400, "InvalidParameterException", "registryIds")
        for rid in ids:
            check_registry({"registryId": rid})
    out = []
    with S.lock:
        for rid in ids or [S.account]:
            password = base64.b64encode(os.urandom(48)).decode()
            now = S.now_ms() / 1000.0    # the fake's clock (the "skew" fault moves it)
            expires = round(now + S.ttl_s, 3)
            S.tokens[password] = {"expires_at": expires, "akid": akid, "registry": rid,
                                  "issued_at": now}
            out.append({"authorizationToken": base64.b64encode(
                ("AWS:" + password).encode()).decode(), "expiresAt": expires,
                "proxyEndpoint": S.proxy_endpoint})
    return {"authorizationData": out}


OPS = {
    "CreateRepository": op_create_repository,
    "DescribeRepositories": op_describe_repositories,
    "DeleteRepository": op_delete_repository,
    "GetAuthorizationToken": op_get_authorization_token,
}


def control(method, path, query, body):
    if method == "POST" and path == "/_fake/fault":
        f = json.loads(body or b"{}")
        kind = f.get("kind")
        if kind == "skew":
            S.verifier.offset_ms = int(float(f.get("offset_s", 0)) * 1000)
            return {"ok": True}
        if kind == "expired_token":
            new = S.verifier.expire_token(f.get("new_token"))
            return {"ok": True, "new_tokens": new, "new_token": next(iter(new.values()), None)}
        if kind == "expire_registry_tokens":
            with S.lock:
                for t in S.tokens.values():
                    t["expires_at"] = min(t["expires_at"], S.now_ms() / 1000.0)
            return {"ok": True}
        if kind not in ("throttle", "error500", "drop", "slow"):
            raise ValueError(f"unknown fault {kind}")
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
    if method == "POST" and path == "/_fake/config":
        f = json.loads(body or b"{}")
        with S.lock:
            if "token_ttl_s" in f:
                S.ttl_s = float(f["token_ttl_s"])
        return {"ok": True}
    if method == "GET" and path == "/_fake/stats":
        with S.lock:
            return {"requests": dict(S.requests), "errors": dict(S.errors),
                    "verified": S.verifier.verified, "tokens": len(S.tokens)}
    if method == "GET" and path == "/_fake/repositories":
        with S.lock:
            return {"repositories": [dict(repo_doc(r), tags=r["tags"])
                                     for r in S.repos.values()]}
    if method == "GET" and path == "/_fake/tokens":
        with S.lock:
            return {"tokens": [dict(v, password=k) for k, v in S.tokens.items()]}
    if method == "GET" and path == "/_fake/check":
        pw = urllib.parse.parse_qs(query).get("password", [""])[0]
        with S.lock:
            t = S.tokens.get(pw)
        return {"valid": bool(t) and t["expires_at"] > S.now_ms() / 1000.0,
                "expires_at": t["expires_at"] if t else None}
    raise KeyError(path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ecr"

    def log_message(self, fmt, *args):
        pass

    def date_time_string(self, timestamp=None):
        return http_date(S.now_ms() if timestamp is None else int(timestamp * 1000))

    def send_json(self, status, doc, extra=None, ctype=CONTENT_TYPE):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "%032x" % time.time_ns())
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if url.path.startswith("/_fake/"):
            try:
                self.send_json(200, control(method, url.path, url.query, body),
                               ctype="application/json")
            except (KeyError, ValueError) as e:
                self.send_json(400, {"error": str(e)}, ctype="application/json")
            return
        target = self.headers.get("X-Amz-Target") or ""
        action = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
        with S.lock:
            S.requests[action or target] = S.requests.get(action or target, 0) + 1
        try:
            if method != "POST" or url.path != "/":
                raise AwsError(404, "UnknownOperationException", "Unknown operation")
            akid = S.verifier.verify(method, url.path, url.query, list(self.headers.items()),
                                     body)
            if action not in OPS:
                raise AwsError(400, "UnknownOperationException", f"Unknown operation {target}")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != CONTENT_TYPE:
                raise AwsError(400, "SerializationException", f"Unexpected content type {ctype!r}")
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AwsError(400, "SerializationException",
                               "Start of structure or map found where not expected.")
            if not isinstance(doc, dict):
                raise AwsError(400, "SerializationException", "Expected an object")
            fault = take_fault(action)
            if fault:
                k = fault["kind"]
                with S.lock:
                    S.errors["fault:" + k] = S.errors.get("fault:" + k, 0) + 1
                if k == "throttle":
                    raise AwsError(400, "ThrottlingException", "Rate exceeded")
                if k == "error500":
                    raise AwsError(500, "ServerException", "Internal error")
                if k == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if k == "slow":
                    time.sleep(float(fault.get("ms", 2000)) / 1000.0)
            self.send_json(200, OPS[action](doc, akid))
        except AwsError as e:
            with S.lock:
                S.errors[e.code] = S.errors.get(e.code, 0) + 1
            extra = {"x-amzn-ErrorType": e.code}
            extra.update(e.headers)
            self.send_json(e.status, {"__type": e.code, "message": e.message}, extra)


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    global S
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--account", default="123456789012")
    ap.add_argument("--access-key", default="AKIDFAKEECR")
    ap.add_argument("--secret-key", default="fake-secret-key-for-ecr-tests")
    ap.add_argument("--token", default=None)
    ap.add_argument("--key", action="append", default=[],
                    help="another identity: AKID:SECRET[:TOKEN] (repeatable)")
    ap.add_argument("--proxy-endpoint", required=True)
    ap.add_argument("--token-ttl-s", type=float, default=12 * 3600)
    a = ap.parse_args()
    creds = {a.access_key: {"secret": a.secret_key, "token": a.token}}
    for k in a.key:
        parts = k.split(":", 2)
        creds[parts[0]] = {"secret": parts[1], "token": parts[2] if len(parts) > 2 else None}
    S = State(a.region, a.account, creds,
              a.proxy_endpoint, a.token_ttl_s)
    srv = Server(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
