#!/usr/bin/env python3
"""Instance identity (docs/protocol.md "AWS identity"): the real coordinator
with agents.aws_accounts, tests/fakes/sts.py standing for STS (it checks the
presigned signature itself), and proofs made here by an independent SigV4
presigner (Python, from the specification), then by the real agent.

The coordinator takes a presigned sts:GetCallerIdentity of the configured
account and role whose session is the instance id claimed; it refuses one
used twice, one for another instance, account or role, an expired one, one
valid longer than 300 s, one signed for another coordinator, and one that
points anywhere but the STS endpoint it trusts (nothing is sent there: it is
no proxy); STS down is 503, not 401. The bootstrap token keeps working when
it is configured too; without a token and without a proof registration is
401. Last, the real agent registers with coordinator.aws_identity = true and
its instance role's credentials from the instance metadata (tests/fakes/imds.py).
"""
import datetime
import hashlib
import hmac
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from coord_proc import BOOT, Coordinator  # noqa: E402
from tap import Tap  # noqa: E402

TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
FAKES = os.path.join(TOP, "tests", "fakes")
ACCOUNT = "123456789012"
ROLE = "slipway-agent"
INSTANCE = "i-0a1b2c3d4e5f60718"
AKID, SECRET = "ASIAIDENTITYTEST0001", "identity-test-secret"
SERVER = "slipway-identity-test"


def start_fake(name, *args):
    p = subprocess.Popen([sys.executable, os.path.join(FAKES, name), *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


def fake_call(port, method, path, body=None):
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


# ---- an independent presigner (AWS General Reference, SigV4 query-string signing) ----

def q(s):
    return urllib.parse.quote(s, safe="-_.~")


def presign(endpoint, akid, secret, token=None, server=SERVER, expires=60, when=None,
            region="us-east-1", action="GetCallerIdentity", nonce=None):
    host = urllib.parse.urlsplit(endpoint).netloc
    t = when or datetime.datetime.now(datetime.timezone.utc)
    amz = t.strftime("%Y%m%dT%H%M%SZ")
    date = amz[:8]
    scope = f"{date}/{region}/sts/aws4_request"
    headers = {"host": host}
    if server:
        headers["x-slipway-coordinator"] = server
    headers["x-slipway-nonce"] = nonce or os.urandom(16).hex()
    signed = ";".join(sorted(headers))
    params = {"Action": action, "Version": "2011-06-15", "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
              "X-Amz-Credential": f"{akid}/{scope}", "X-Amz-Date": amz,
              "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": signed}
    if token:
        params["X-Amz-Security-Token"] = token
    cq = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(params.items()))
    ch = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    creq = "\n".join(["GET", "/", cq, ch, signed, hashlib.sha256(b"").hexdigest()])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (date, region, "sts", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    url = f"{endpoint.rstrip('/')}/?{cq}&X-Amz-Signature={sig}"
    out = {"Host": host, "X-Slipway-Nonce": headers["x-slipway-nonce"]}
    if server:
        out["X-Slipway-Coordinator"] = server
    return {"url": url, "headers": out}


class Trap(http.server.BaseHTTPRequestHandler):
    """A server a forged proof points at: it must never be called."""
    hits = 0

    def do_GET(self):
        Trap.hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def register(co, proof=None, instance=INSTANCE, token=None):
    body = {"instance_id": instance, "hostname": "h", "fleet": "default", "protocol": 1}
    if proof is not None:
        body["aws_identity"] = proof
    return co.call("POST", "/v1/agents/register", body=body, token=token)


def main():
    t = Tap(13)
    sts, sts_port = start_fake("sts.py", "--access-key", AKID, "--secret-key", SECRET,
                               "--account", ACCOUNT, "--role", ROLE, "--session", INSTANCE)
    endpoint = f"http://127.0.0.1:{sts_port}"
    trap = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    co = Coordinator(extra={"agents.aws_accounts": f"111122223333, {ACCOUNT}",
                            "agents.aws_roles": ROLE, "agents.sts_endpoint": endpoint,
                            "agents.aws_server_id": SERVER})
    # AWS identities only: no bootstrap token at all.
    with open(co.conf) as f:
        conf = [ln for ln in f if not ln.startswith("agents.bootstrap_token")]
    with open(co.conf, "w") as f:
        f.writelines(conf)
    agent = None
    try:
        co.start()
        good = presign(endpoint, AKID, SECRET)
        st, b, _ = register(co, good)
        t.check("a presigned GetCallerIdentity of the fleet's account and role registers",
                st == 200 and b.get("agent_id") and len(b.get("token", "")) == 96, (st, b))
        st, b, _ = register(co, good)
        t.check("the same proof a second time is refused (401)", st == 401 and
                "used before" in json.dumps(b), (st, b))
        st, b, _ = register(co, presign(endpoint, AKID, SECRET), instance="i-0ffffffffffffffff")
        t.check("a proof of one instance does not register another (the role session is "
                "the instance)", st == 401 and "session" in json.dumps(b), (st, b))
        fake_call(sts_port, "POST", "/_fake/identity", {
            "access_key": "AKIDOTHERACCOUNT0001", "secret": "s2", "account": "999988887777",
            "role": ROLE, "session": INSTANCE})
        fake_call(sts_port, "POST", "/_fake/identity", {
            "access_key": "AKIDOTHERROLE0000001", "secret": "s3", "account": ACCOUNT,
            "role": "admin", "session": INSTANCE})
        st1, b1, _ = register(co, presign(endpoint, "AKIDOTHERACCOUNT0001", "s2"))
        st2, b2, _ = register(co, presign(endpoint, "AKIDOTHERROLE0000001", "s3"))
        t.check("another account, another role: refused", st1 == 401 and st2 == 401 and
                "account 999988887777" in json.dumps(b1) and "role admin" in json.dumps(b2),
                (st1, b1, st2, b2))
        calls_before = fake_call(sts_port, "GET", "/_fake/stats")["requests"]
        trap_url = f"http://127.0.0.1:{trap.server_address[1]}"
        forged = [presign(trap_url, AKID, SECRET),                       # another host
                  presign(endpoint.replace("127.0.0.1", "localhost"), AKID, SECRET),
                  presign(endpoint, AKID, SECRET, action="AssumeRole"),
                  presign(endpoint, AKID, SECRET, expires=301),
                  presign(endpoint, AKID, SECRET, server="another-coordinator"),
                  presign(endpoint, AKID, SECRET, server=None),
                  presign(endpoint, AKID, SECRET,
                          when=datetime.datetime.now(datetime.timezone.utc) -
                          datetime.timedelta(minutes=10))]
        p = presign(endpoint, AKID, SECRET)
        p["url"] = p["url"].replace(endpoint, endpoint + "@127.0.0.1:%d" % trap.server_address[1])
        forged.append(p)
        p = presign(endpoint, AKID, SECRET)
        p["headers"]["Host"] = "169.254.169.254"
        forged.append(p)
        results = [register(co, f)[0] for f in forged]
        calls_after = fake_call(sts_port, "GET", "/_fake/stats")["requests"]
        t.check("forged proofs (another host, AssumeRole, 301 s, another coordinator, none, "
                "expired, userinfo, a wrong Host) are all 401", results == [401] * len(forged),
                results)
        t.check("... and none of them was sent anywhere: not to the trap, not to STS",
                Trap.hits == 0 and calls_after == calls_before, (Trap.hits, calls_before,
                                                                  calls_after))
        st, b, _ = register(co, presign(endpoint, AKID, "wrong-secret"))
        t.check("a proof STS refuses (a bad signature) is 401", st == 401 and
                "SignatureDoesNotMatch" in json.dumps(b), (st, b))
        fake_call(sts_port, "POST", "/_fake/fault", {"kind": "error503", "count": 6})
        st, b, _ = register(co, presign(endpoint, AKID, SECRET))
        fake_call(sts_port, "POST", "/_fake/clear")
        t.check("STS unavailable: 503 (the agent retries), not 401", st == 503, (st, b))
        st, b, _ = register(co, None)
        t.check("neither a token nor a proof: 401", st == 401, (st, b))
        st, b, _ = register(co, None, token="some-token")
        t.check("a bootstrap token where none is configured: 401", st == 401, (st, b))
        co.kill()

        # The bootstrap token stays for embedded and dev fleets, beside AWS identities.
        with open(co.conf, "a") as f:
            f.write(f'agents.bootstrap_token = "{BOOT}"\n')
        co.restart()
        st1, _, _ = register(co, None, token=BOOT, instance="i-0000000000000bbbb")
        st2, _, _ = register(co, presign(endpoint, AKID, SECRET))
        st3, _, _ = register(co, None, token="wrong")
        t.check("with both configured: the bootstrap token registers, a proof registers, a "
                "wrong token is 401", (st1, st2, st3) == (200, 200, 401), (st1, st2, st3))
        co.kill()

        # The real agent: coordinator.aws_identity, its role's credentials from IMDS.
        agent_bin = os.path.join(co_build(), "slipway-agent")
        imds, imds_port = start_fake("imds.py", "--access-key-id", AKID, "--secret-access-key",
                                     SECRET, "--token", "", "--instance-id", INSTANCE)
        try:
            st_dir = os.path.join(co.tmp, "agent-state")
            conf = os.path.join(co.tmp, "agent.conf")
            with open(conf, "w") as f:
                f.write(f'coordinator.url = "http://127.0.0.1:{co.port}"\n'
                        f'coordinator.aws_identity = true\n'
                        f'coordinator.retry_base = "100ms"\ncoordinator.retry_cap = "1s"\n'
                        f'aws.region = "us-east-1"\naws.sts_endpoint = "{endpoint}"\n'
                        f'aws.server_id = "{SERVER}"\nagent.state_dir = "{st_dir}"\n'
                        f'docker.socket = "{os.path.join(co.tmp, "no-docker.sock")}"\n'
                        f'proxy.spawn = false\nproxy.control_socket = '
                        f'"{os.path.join(co.tmp, "no-proxy.sock")}"\n'
                        f'logs.enabled = false\nmetrics.enabled = false\n'
                        f'metadata.block = "off"\n')
            co.restart()
            with open(co.log_path, "rb") as f:
                log_start = len(f.read())
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AWS_", "SLIPWAY_AGENT_"))}
            env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://127.0.0.1:{imds_port}"
            log_path = os.path.join(co.tmp, "agent.log")
            agent = subprocess.Popen([agent_bin, "--config", conf], stdout=open(log_path, "w"),
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
            ok = False
            deadline = time.time() + 20
            while time.time() < deadline and not ok:
                with open(log_path, errors="replace") as f:
                    ok = "coord.registered" in f.read()
                time.sleep(0.1)
            log = open(log_path, errors="replace").read()
            t.check("the agent registers with its instance role (credentials from IMDS), no "
                    "bootstrap token anywhere", ok and "NoCredentials" not in log, log[-3000:])
            with open(co.log_path, "rb") as f:
                coord_log = f.read()[log_start:].decode(errors="replace")
            t.check("the coordinator verified the agent's assumed-role ARN",
                    "agents.identity_verified" in coord_log and
                    f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{INSTANCE}" in coord_log,
                    coord_log[-2000:])
        finally:
            imds.kill()
    finally:
        if agent and agent.poll() is None:
            agent.kill()
            agent.wait()
        co.kill()
        subprocess.run(["rm", "-rf", co.tmp])
        sts.kill()
        trap.shutdown()
    return t.done()


def co_build():
    b = os.environ.get("SLIPWAY_BUILD") or os.path.join(TOP, "build")
    return b if os.path.isabs(b) else os.path.join(TOP, b)


if __name__ == "__main__":
    sys.exit(main())
