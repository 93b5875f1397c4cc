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
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awsfake  # noqa: E402
from awssig import CODES_JSON, AwsError, Verifier  # noqa: E402

TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
CONTENT_TYPE = "application/x-amz-json-1.1"
NAME_RE = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
REGISTRY_RE = re.compile(r"[0-9]{12}")
FAULT_ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "error500": (500, "ServerException", "Internal error"),
}


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
        self.faults = awsfake.Faults(self.lock, ("throttle", "error500", "drop", "slow"))
        self.requests = {}
        self.errors = {}

    def now_ms(self):
        return self.verifier.now_ms()


S = None


def registry_host():
    return urllib.parse.urlsplit(S.proxy_endpoint).netloc


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


def expire_registry_tokens(f):
    with S.lock:
        for t in S.tokens.values():
            t["expires_at"] = min(t["expires_at"], S.now_ms() / 1000.0)
    return {"ok": True}


def control(method, path, query, body):
    done = awsfake.fault_control(method, path, body, S.faults, S.verifier,
                                 {"expire_registry_tokens": expire_registry_tokens})
    if done is not None:
        return done
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


class Handler(awsfake.JsonHandler):
    server_version = "fake-ecr"
    json_type = CONTENT_TYPE
    target_prefix = TARGET_PREFIX
    fault_errors = FAULT_ERRORS
    known_ops = OPS
    control = staticmethod(control)

    def state(self):
        return S

    def fake_now_ms(self):
        return S.now_ms()

    def call(self, op, akid, doc, fault):
        return OPS[op](doc, akid)


def main():
    global S
    ap = argparse.ArgumentParser()
    awsfake.add_key_args(ap, "AKIDFAKEECR", "fake-secret-key-for-ecr-tests", more_keys=True)
    ap.add_argument("--account", default="123456789012")
    ap.add_argument("--proxy-endpoint", required=True)
    ap.add_argument("--token-ttl-s", type=float, default=12 * 3600)
    a = ap.parse_args()
    S = State(a.region, a.account, awsfake.creds_of(a), a.proxy_endpoint, a.token_ttl_s)
    awsfake.serve(Handler)


if __name__ == "__main__":
    main()
