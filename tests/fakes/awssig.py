"""AWS Signature Version 4 checking for slipway's fakes of AWS services
(Python standard library only).

Every fake of an AWS endpoint (cloudwatch.py, sqs.py, ecr.py, ...) verifies
each request's signature here, from the specification (AWS General
Reference, "Signature Version 4 signing process": canonical request, string
to sign, derived key, constant-time compare), independently of slipway's own
signer: a bug in common/sigv4.c cannot be mirrored by the fake that judges it.

Both forms are checked: the Authorization header, and a presigned query
string (X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires,
X-Amz-SignedHeaders, X-Amz-Signature; the token in X-Amz-Security-Token).

Services answer signature problems with different error names; each fake
passes its own table (see CODES_JSON and CODES_QUERY). A failure raises
AwsError(status, code, message, headers); the fake turns it into its
service's error document.

    v = Verifier(region="us-east-1", service="sqs",
                 creds={"AKID": {"secret": "s", "token": None}},
                 now_ms=state.now_ms, codes=CODES_QUERY)
    akid = v.verify("POST", "/", "", list(handler.headers.items()), body)
    v.expire_token()    # the current session token expires: ExpiredToken
"""
import datetime
import hashlib
import hmac
import threading
import time
import urllib.parse

SKEW_MS = 5 * 60 * 1000
ALGORITHM = "AWS4-HMAC-SHA256"

# Error names of JSON-protocol services (CloudWatch Logs, ECR).
CODES_JSON = {
    "missing": (403, "MissingAuthenticationTokenException"),
    "incomplete": (400, "IncompleteSignatureException"),
    "unknown_key": (403, "UnrecognizedClientException"),
    "bad_signature": (403, "InvalidSignatureException"),
    "expired_token": (403, "ExpiredTokenException"),
    "skew": (400, "InvalidSignatureException"),
}

# Error names of services with a Query heritage (SQS, STS).
CODES_QUERY = {
    "missing": (403, "MissingAuthenticationToken"),
    "incomplete": (400, "IncompleteSignature"),
    "unknown_key": (403, "InvalidClientTokenId"),
    "bad_signature": (403, "SignatureDoesNotMatch"),
    "expired_token": (403, "ExpiredToken"),
    "skew": (403, "SignatureDoesNotMatch"),
}

BAD_SIGNATURE_MSG = ("The request signature we calculated does not match the signature you "
                     "provided. Check your AWS Secret Access Key and signing method. Consult "
                     "the service documentation for details.")


class AwsError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


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
    """Non-S3 services: normalize (dot segments, repeated slashes), then encode
    each segment of the request-line path once more."""
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


def canonical_query(raw_query, drop=()):
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = urllib.parse.unquote(name)
        value = urllib.parse.unquote(value)
        if name in drop:
            continue
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


def signing_key(secret, date, region, service):
    k = hmac_sha256(("AWS4" + secret).encode("utf-8"), date)
    k = hmac_sha256(k, region)
    k = hmac_sha256(k, service)
    return hmac_sha256(k, "aws4_request")


class Verifier:
    """Checks SigV4 signatures for one (region, service) against a set of
    credentials: {access key id: {"secret": ..., "token": ... or None}}."""

    def __init__(self, region, service, creds, now_ms=None, codes=None):
        self.region = region
        self.service = service
        self.creds = creds
        self.codes = codes or CODES_JSON
        self.expired_tokens = set()
        self.offset_ms = 0                   # the "skew" fault moves the fake's clock
        self._now = now_ms
        self.lock = threading.Lock()
        self.verified = 0

    def now_ms(self):
        if self._now:
            return self._now()
        return int(time.time() * 1000) + self.offset_ms

    def fail(self, kind, message, headers=None):
        status, code = self.codes[kind]
        raise AwsError(status, code, message, headers)

    def expire_token(self, new_token=None):
        """Every session token in use expires now (requests still carrying it get
        ExpiredToken); each key gets a new one, returned as {akid: token}."""
        out = {}
        with self.lock:
            for akid, c in self.creds.items():
                if c.get("token"):
                    self.expired_tokens.add(c["token"])
                    c["token"] = new_token or ("tok-" + str(time.time_ns()))
                    out[akid] = c["token"]
        return out

    def _check_token(self, creds, token):
        if creds.get("token") or token:
            if token in self.expired_tokens:
                self.fail("expired_token", "The security token included in the request is "
                          "expired")
            if token != creds.get("token"):
                self.fail("unknown_key", "The security token included in the request is "
                          "invalid.")

    def _scope(self, credential, amz):
        cred = credential.split("/")
        if len(cred) != 5 or cred[4] != "aws4_request":
            self.fail("incomplete", "Credential should be scoped to a valid region.")
        akid, date, region, service = cred[0], cred[1], cred[2], cred[3]
        when = amz_date_ms(amz)
        if when is None or amz[:8] != date:
            self.fail("incomplete", f"Date in Credential scope does not match YYYYMMDD from "
                      f"ISO-8601 version of date from HTTP: '{date}' != '{amz[:8]}', from "
                      f"'{amz}'.")
        if region != self.region or service != self.service:
            self.fail("bad_signature", f"Credential should be scoped to a valid region and "
                      f"service: '{region}/{service}'.")
        creds = self.creds.get(akid)
        if creds is None:
            self.fail("unknown_key", "The security token included in the request is invalid.")
        return akid, date, when, creds

    def _canonical_headers(self, signed, headers):
        lines = []
        for name in signed:
            values = [v for n, v in headers if n.lower() == name]
            if not values:
                self.fail("bad_signature", f"The request signature we calculated does not "
                          f"match: signed header '{name}' is missing.")
            lines.append(f"{name}:{canonical_header_value(values)}\n")
        return "".join(lines)

    def _compare(self, secret, date, amz, creq, got):
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        sts = "\n".join([ALGORITHM, amz, scope,
                         hashlib.sha256(creq.encode("utf-8")).hexdigest()])
        want = hmac.new(signing_key(secret, date, self.region, self.service),
                        sts.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, got):
            self.fail("bad_signature", BAD_SIGNATURE_MSG)

    def _check_clock(self, when, amz):
        # After the signature, as the services do it.
        now = self.now_ms()
        if when < now - SKEW_MS:
            self.fail("skew", f"Signature expired: {amz} is now earlier than "
                      f"{fmt_amz(now - SKEW_MS)} ({fmt_amz(now)} - 5 min.)")
        if when > now + SKEW_MS:
            self.fail("skew", f"Signature not yet current: {amz} is still later than "
                      f"{fmt_amz(now + SKEW_MS)} ({fmt_amz(now)} + 5 min.)")

    def verify(self, method, raw_path, raw_query, headers, body):
        """headers: list of (name, value); body: bytes. Returns the access key
        id; raises AwsError."""
        auth = [v for n, v in headers if n.lower() == "authorization"]
        if not auth:
            q = urllib.parse.parse_qs(raw_query or "", keep_blank_values=True)
            if "X-Amz-Signature" in q:
                return self.verify_presigned(method, raw_path, raw_query, headers, body)
            self.fail("missing", "Missing Authentication Token")
        auth = auth[0]
        if not auth.startswith(ALGORITHM + " "):
            self.fail("incomplete", "Authorization header requires 'Credential', "
                      "'SignedHeaders' and 'Signature' parameters with the AWS4-HMAC-SHA256 "
                      "algorithm.")
        fields = {}
        for part in auth[len(ALGORITHM) + 1:].split(","):
            k, _, v = part.strip().partition("=")
            fields[k] = v
        if not all(k in fields for k in ("Credential", "SignedHeaders", "Signature")):
            self.fail("incomplete", "Authorization header requires 'Credential', "
                      "'SignedHeaders' and 'Signature' parameters.")
        amz = [v for n, v in headers if n.lower() == "x-amz-date"]
        if not amz:
            self.fail("incomplete", "Authorization header requires existence of either a "
                      "'X-Amz-Date' or a 'Date' header.")
        amz = amz[0].strip()
        akid, date, when, creds = self._scope(fields["Credential"], amz)
        signed = fields["SignedHeaders"].split(";")
        if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed:
            self.fail("bad_signature", BAD_SIGNATURE_MSG)
        token = [v for n, v in headers if n.lower() == "x-amz-security-token"]
        token = token[0] if token else None
        self._check_token(creds, token)
        creq = "\n".join([method, canonical_uri(raw_path), canonical_query(raw_query),
                          self._canonical_headers(signed, headers), fields["SignedHeaders"],
                          hashlib.sha256(body).hexdigest()])
        self._compare(creds["secret"], date, amz, creq, fields["Signature"])
        self._check_clock(when, amz)
        with self.lock:
            self.verified += 1
        return akid

    def verify_presigned(self, method, raw_path, raw_query, headers, body=b""):
        q = urllib.parse.parse_qs(raw_query or "", keep_blank_values=True)

        def one(name):
            v = q.get(name)
            if not v or len(v) != 1:
                self.fail("incomplete", f"AWS query-string parameters must include '{name}'.")
            return v[0]

        if one("X-Amz-Algorithm") != ALGORITHM:
            self.fail("incomplete", "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
        amz = one("X-Amz-Date")
        akid, date, when, creds = self._scope(one("X-Amz-Credential"), amz)
        try:
            expires = int(one("X-Amz-Expires"))
        except ValueError:
            self.fail("incomplete", "X-Amz-Expires should be a number")
        if expires < 1 or expires > 604800:
            self.fail("incomplete", "X-Amz-Expires must be less than a week (in seconds) that "
                      "is 604800")
        signed_str = one("X-Amz-SignedHeaders")
        signed = signed_str.split(";")
        if signed != sorted(signed) or "host" not in signed:
            self.fail("bad_signature", BAD_SIGNATURE_MSG)
        token = q.get("X-Amz-Security-Token", [None])[0]
        self._check_token(creds, token)
        # Presigners sign either UNSIGNED-PAYLOAD or the hash of the (empty) body.
        base = [method, canonical_uri(raw_path),
                canonical_query(raw_query, drop=("X-Amz-Signature",)),
                self._canonical_headers(signed, headers), signed_str]
        try:
            self._compare(creds["secret"], date, amz, "\n".join(base + ["UNSIGNED-PAYLOAD"]),
                          one("X-Amz-Signature"))
        except AwsError:
            self._compare(creds["secret"], date, amz,
                          "\n".join(base + [hashlib.sha256(body).hexdigest()]),
                          one("X-Amz-Signature"))
        now = self.now_ms()
        if now > when + expires * 1000:
            self.fail("skew", f"Request has expired: X-Amz-Date {amz} plus {expires} s is "
                      f"earlier than {fmt_amz(now)}")
        if when > now + SKEW_MS:
            self.fail("skew", f"Signature not yet current: {amz} is still later than "
                      f"{fmt_amz(now + SKEW_MS)} ({fmt_amz(now)} + 5 min.)")
        with self.lock:
            self.verified += 1
        return akid
