#!/usr/bin/env python3
"""The `slipway` CLI against a REAL coordinator (and, for deploy, the REAL
agent on the harness's Docker engine and registry): every command, its
output (headers, aligned columns, the fields it prints) and its exit status,
failures included (a bad key, an unknown app, the coordinator down, TLS
without the right CA, usage errors); `--json` output parses and matches the
API; `slipway login` writes a private config file and never shows the key;
`slipway deploy --wait` from a directory ends with the new version serving
through the agent's proxy, and exits non-zero when the build fails or the
rollout is rolled back. GitLab linking runs against tests/fakes/gitlab.py.

Exit codes under test: 0 success, 1 failure, 2 usage (docs/cli.md)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
import agentlib as L  # noqa: E402
from coord_proc import BOOT, BUILD, Coordinator  # noqa: E402
from coord_proc import Agent as ProtoAgent  # noqa: E402
from gitlab import FakeGitLab  # noqa: E402
from tap import Tap  # noqa: E402

L.require_env()
SLIPWAY = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(L.TOP, BUILD), "slipway")
BASE_IMAGE = os.environ.get("SLIPWAY_TEST_BASE_IMAGE", "")
REGISTRY = os.environ.get("SLIPWAY_TEST_REGISTRY", "")

t = Tap()
env = L.Env("cli")
APP = "cli-" + env.run
HOME = os.path.join(env.tmp, "home")
os.makedirs(HOME)


def cli_env(host=None, key=None, **extra):
    """The CLI's environment: nothing inherited that could point it elsewhere."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("SLIPWAY_") and k != "XDG_CONFIG_HOME"}
    e["HOME"] = HOME
    if host:
        e["SLIPWAY_HOST"] = host
    if key:
        e["SLIPWAY_API_KEY"] = key
    for k, v in extra.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


class Run:
    def __init__(self, p):
        self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr

    def __repr__(self):
        return f"exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-2000:]}"


DEFAULT_ENV = {}


def sw(*args, e=None, stdin=None, timeout=600):
    p = subprocess.run([SLIPWAY, *args], env=e if e is not None else DEFAULT_ENV, input=stdin,
                       capture_output=True, text=True, timeout=timeout)
    return Run(p)


def table(out):
    """(headers, rows as dicts, aligned?) of a printed table: columns start where
    the header words start; every cell must start exactly there, after at least
    two blanks."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        return [], [], False
    head = lines[0]
    starts, headers, i = [], [], 0
    while i < len(head):
        if head[i] != " " and (i == 0 or head[i - 1] == " "):
            starts.append(i)
            j = head.find(" ", i)
            headers.append(head[i:] if j < 0 else head[i:j])
        i += 1
    rows, aligned = [], head == head.rstrip()
    for ln in lines[1:]:
        cells = {}
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(ln)
            cells[headers[k]] = ln[s:end].strip()
            if k > 0 and (len(ln) <= s or ln[s] == " " or ln[s - 2:s] != "  "):
                aligned = False
        aligned = aligned and ln == ln.rstrip()
        rows.append(cells)
    return headers, rows, aligned


def check_table(name, r, headers, min_rows=0):
    h, rows, aligned = table(r.out)
    ok = r.rc == 0 and h == headers and aligned and len(rows) >= min_rows
    t.check(f"{name}: exit 0, headers {' '.join(headers)}, aligned columns, "
            f">= {min_rows} rows", ok, (h, rows, r))
    return rows


def parses(r):
    try:
        return json.loads(r.out) if r.rc == 0 else None
    except ValueError:
        return None


def get(port, path="/"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def project(name, release, listen, extra_env=None, dockerfile_tail="", grace="20s"):
    """A directory to deploy: Dockerfile FROM the harness's base image, slipway.yml,
    a .git directory and a .dockerignore whose exclusions the build checks."""
    d = os.path.join(env.tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    write(os.path.join(d, "Dockerfile"),
          f"FROM {BASE_IMAGE}\n"
          "COPY . /ctx\n"
          # What .dockerignore and .git rules must have left out, and what must be in.
          "RUN test -f /ctx/app.txt && test -f /ctx/slipway.yml && test ! -e /ctx/secret.txt"
          " && test ! -e /ctx/.git && test ! -e /ctx/logs/debug.log"
          " && test -f /ctx/logs/keep.log\n"
          f"ENV RELEASE={release}\n" + dockerfile_tail)
    env_lines = "".join(f"      {k}: \"{v}\"\n" for k, v in (extra_env or {}).items())
    write(os.path.join(d, "slipway.yml"),
          "services:\n  web:\n    build: .\n    port: 8080\n"
          f"    health: {{path: /health, interval: 200ms, timeout: 1s, grace: {grace}}}\n"
          "    stop_grace: 2s\n"
          f"    proxy: {{listen: {listen}}}\n"
          + (f"    environment:\n{env_lines}" if env_lines else ""))
    write(os.path.join(d, "app.txt"), release + "\n")
    write(os.path.join(d, "secret.txt"), "never uploaded\n")
    write(os.path.join(d, "logs", "debug.log"), "ignored\n")
    write(os.path.join(d, "logs", "keep.log"), "re-included\n")
    write(os.path.join(d, ".dockerignore"), "# test\nsecret.txt\nlogs/\n!logs/keep.log\n")
    subprocess.run(["git", "init", "-q", d], check=True)
    write(os.path.join(d, ".git", "secret-in-git"), "never uploaded\n")
    return d


class CoordForAgent:
    def __init__(self, co):
        self.co = co
        self.url = f"http://127.0.0.1:{co.port}"
        self.token = BOOT

    def agents(self):
        st, b, _ = self.co.call("GET", "/v1/agents", token=self.co.admin_key)
        return b["agents"] if st == 200 else []


def usage_and_connection(co, host, key):
    r = sw("help", e=cli_env())
    t.check("help: exit 0, lists every command",
            r.rc == 0 and all(c in r.out for c in ("login", "apps", "deploy", "builds",
                                                    "releases", "ps", "agents", "logs",
                                                    "env", "scale")), r)
    r = sw("releases", "promote", "--help", e=cli_env())
    t.check("releases promote --help: exit 0, usage and options",
            r.rc == 0 and r.out.startswith("usage: slipway releases promote <id>")
            and "--wait" in r.out, r)
    r = sw("frobnicate", e=cli_env())
    t.check("an unknown command: exit 2", r.rc == 2 and "no command 'frobnicate'" in r.err, r)
    r = sw("apps", "create", e=cli_env(host, key))
    t.check("a missing argument: exit 2 with the usage",
            r.rc == 2 and "missing arguments" in r.err and "usage: slipway apps create" in r.err,
            r)
    r = sw("apps", "--colour", e=cli_env(host, key))
    t.check("an unknown option: exit 2", r.rc == 2 and "unknown option --colour" in r.err, r)
    r = sw("scale", APP, "web", "--count", "500", e=cli_env(host, key))
    t.check("a value out of range: exit 2", r.rc == 2 and "--count" in r.err, r)
    r = sw("apps", e=cli_env())
    t.check("no coordinator configured: exit 2, says how to set one",
            r.rc == 2 and "SLIPWAY_HOST" in r.err and "slipway login" in r.err, r)
    r = sw("apps", e=cli_env(host))
    t.check("no API key: exit 2, says how to give one",
            r.rc == 2 and "SLIPWAY_API_KEY" in r.err, r)
    r = sw("apps", e=cli_env(host, "slw_" + "0" * 64))
    t.check("a bad key: exit 1 with a clear message",
            r.rc == 1 and "refused the API key from SLIPWAY_API_KEY" in r.err
            and r.out == "", r)
    dead = L.free_port()
    r = sw("apps", e=cli_env(f"http://127.0.0.1:{dead}", key))
    t.check("the coordinator down: exit 1, names the URL",
            r.rc == 1 and f"cannot reach the coordinator at http://127.0.0.1:{dead}" in r.err, r)
    r = sw("apps", e=cli_env("127.0.0.1:8700", key))
    t.check("SLIPWAY_HOST without a scheme: exit 1, says what is expected",
            r.rc == 1 and "http://" in r.err, r)
    reader = co.apikey(name="reader", role="read")
    r = sw("apps", "create", "nope", e=cli_env(host, reader))
    t.check("a read key creating an app: exit 1, forbidden",
            r.rc == 1 and "forbidden" in r.err, r)


def login(host, key):
    keyfile = os.path.join(env.tmp, "key.txt")
    write(keyfile, key + "\n")
    conf = os.path.join(HOME, ".config", "slipway", "config")
    bad = os.path.join(env.tmp, "bad.txt")
    write(bad, "slw_" + "1" * 64 + "\n")
    r = sw("login", "--host", host, "--api-key-file", bad, e=cli_env())
    t.check("login with a key the coordinator refuses: exit 1, nothing saved",
            r.rc == 1 and not os.path.exists(conf) and "refused" in r.err, r)
    r = sw("login", "--host", host + "/", "--api-key-file", keyfile, e=cli_env())
    mode = os.stat(conf).st_mode & 0o777 if os.path.exists(conf) else None
    dmode = os.stat(os.path.dirname(conf)).st_mode & 0o777 if mode else None
    t.check("login: exit 0, says who, writes the config 0600 in a 0700 directory",
            r.rc == 0 and "as admin (role admin)" in r.out and mode == 0o600
            and dmode == 0o700, (r, oct(mode or 0), oct(dmode or 0)))
    t.check("login never shows the key", key not in r.out + r.err, r)
    r = sw("apps", e=cli_env())
    t.check("after login, commands work with no SLIPWAY_* variables", r.rc == 0, r)
    xdg = os.path.join(env.tmp, "xdg")
    r = sw("login", "--host", host, e=cli_env(XDG_CONFIG_HOME=xdg), stdin=key + "\n")
    t.check("login reads the key from stdin and honours XDG_CONFIG_HOME",
            r.rc == 0 and os.path.exists(os.path.join(xdg, "slipway", "config"))
            and key not in r.out + r.err, r)
    os.remove(conf)
    kf = sw("apps", e=cli_env(host, SLIPWAY_API_KEY_FILE=keyfile))
    t.check("SLIPWAY_API_KEY_FILE (a GitLab File variable) works", kf.rc == 0, kf)


APP2 = "cli2-" + env.run   # fleet "idle": no agent, rollouts end at once


def apps_section(co, host, key):
    r = sw("apps", "create", APP)
    t.check("apps create: exit 0, says what it made",
            r.rc == 0 and r.out == f"Created app {APP} (fleet default, strategy all, GitLab "
                                   "deploys on branch).\n", r)
    r = sw("apps", "create", APP2, "--fleet", "idle", "--strategy", "one-at-a-time")
    t.check("apps create with options", r.rc == 0 and "fleet idle, strategy one-at-a-time"
            in r.out, r)
    r = sw("apps", "create", APP)
    t.check("apps create of an existing app: exit 1", r.rc == 1 and "exists already" in r.err, r)
    r = sw("apps", "create", "Bad_Name")
    t.check("apps create with a bad name: exit 2", r.rc == 2 and "names are" in r.err, r)
    rows = check_table("apps", sw("apps"), ["APP", "STATUS", "RELEASE"], 2)
    mine = {row["APP"]: row for row in rows}
    t.check("apps lists both apps as created, without release",
            mine.get(APP, {}).get("STATUS") == "created" and mine.get(APP2, {}).get("RELEASE")
            == "-", rows)
    doc = parses(sw("apps", "--json"))
    st, api, _ = co.call("GET", "/v1/apps", token=key)
    t.check("apps --json parses and is the API's answer", doc == api, (doc, api))
    r = sw("apps", "info", APP2)
    lines = dict(ln.split(":", 1) for ln in r.out.splitlines() if ":" in ln)
    t.check("apps info: exit 0, the fields",
            r.rc == 0 and lines.get("App", "").strip() == APP2
            and lines.get("Fleet", "").strip() == "idle"
            and lines.get("Strategy", "").strip() == "one-at-a-time"
            and lines.get("Status", "").strip() == "created"
            and lines.get("Rollout", "").strip() == "none yet"
            and lines.get("Created", "").strip() in ("just now",) + tuple(
                f"{n} seconds ago" for n in range(1, 60)), r)
    info = parses(sw("apps", "info", APP2, "--json"))
    t.check("apps info --json parses", info and info["name"] == APP2 and "agents" in info, info)
    r = sw("apps", "info", "nosuch")
    t.check("an unknown app: exit 1, says so", r.rc == 1 and "unknown app nosuch" in r.err, r)


def releases_env_section(co, host, key):
    st, b, _ = co.call("POST", f"/v1/apps/{APP2}/releases", token=key, body={
        "services": {"web": {"image": "registry.invalid/web@sha256:" + "0" * 64,
                             "port": 8080}}, "description": "from images"})
    r1 = b.get("release") if isinstance(b, dict) else None
    rows = check_table("releases", sw("releases", APP2),
                       ["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"], 1)
    t.check("releases shows the release",
            rows and rows[0]["ID"] == r1 and rows[0]["BUILD"] == "-"
            and rows[0]["DESCRIPTION"] == "from images"
            and (rows[0]["CREATED"] == "just now" or rows[0]["CREATED"].endswith("ago")), rows)
    doc = parses(sw("releases", "--app", APP2, "--json"))
    t.check("releases --json parses", doc and doc["releases"][0]["id"] == r1, doc)
    r = sw("releases", e=dict(DEFAULT_ENV, SLIPWAY_APP=APP2))
    t.check("SLIPWAY_APP names the app", r.rc == 0 and r1 in r.out, r)
    r = sw("releases")
    t.check("no app anywhere: exit 2", r.rc == 2 and "which app?" in r.err, r)

    r = sw("env", "set", APP2, "FOO=bar", "SPACED=a b", "EMPTY=")
    t.check("env set: exit 0, a new release not yet deployed",
            r.rc == 0 and r.out.startswith(f"Set FOO, SPACED, EMPTY on {APP2}: release r_")
            and "not deployed" in r.out, r)
    r = sw("env", APP2)
    t.check("env prints NAME=value lines, sorted",
            r.rc == 0 and r.out == "EMPTY=\nFOO=bar\nSPACED=a b\n", r)
    doc = parses(sw("env", APP2, "--json"))
    t.check("env --json parses", doc and doc["environment"] == {"FOO": "bar", "SPACED": "a b",
                                                                 "EMPTY": ""}, doc)
    reader = co.apikey(name="reader2", role="read")
    r = sw("env", APP2, e=cli_env(host, reader))
    t.check("env with a read key: exit 1, forbidden", r.rc == 1 and "forbidden" in r.err, r)
    r = sw("env", "unset", APP2, "FOO", "--promote", "--wait")
    t.check("env unset --promote --wait: exit 0, follows the rollout",
            r.rc == 0 and f"Unset FOO on {APP2}: release r_" in r.out and "rollout ro_" in r.out
            and "succeeded" in r.out, r)
    r = sw("env", "set", APP2, "NOEQUALS")
    t.check("env set without '=': exit 2", r.rc == 2 and "expected NAME=value" in r.err, r)
    r = sw("env", "set", APP2, "A=1", "--wait")
    t.check("env set --wait without --promote: exit 2", r.rc == 2, r)

    r = sw("scale", APP2, "web", "--count", "3", "--memory", "256M", "--wait")
    t.check("scale --wait: exit 0, follows the rollout",
            r.rc == 0 and f"Scaled {APP2}/web to 3 with 256 MB each" in r.out
            and "succeeded" in r.out, r)
    r = sw("apps", "info", APP2)
    t.check("apps info shows the scale", "web=3(256MB)" in r.out, r)
    r = sw("scale", APP2, "nosvc", "--count", "1")
    t.check("scale of an unknown service: exit 1", r.rc == 1 and "nosvc" in r.err, r)

    r = sw("releases", "promote", r1, "--app", APP2, "--wait")
    t.check("releases promote --wait: exit 0",
            r.rc == 0 and f"Promoted {r1} on {APP2}" in r.out and "succeeded" in r.out, r)
    doc = parses(sw("releases", "rollback", r1, "--app", APP2, "--json"))
    t.check("releases rollback --json: a new release and its rollout",
            doc and doc["release"] != r1 and doc["rollout"].startswith("ro_"), doc)
    r = sw("releases", "rollback", r1, "--app", APP2)
    t.check("releases rollback: exit 0, says what it made",
            r.rc == 0 and f"Rolled {APP2} back to {r1}: release r_" in r.out, r)
    r = sw("releases", "promote", "r_nosuch", "--app", APP2)
    t.check("promote an unknown release: exit 1", r.rc == 1 and "r_nosuch" in r.err, r)
    check_table("builds of an app without builds", sw("builds", APP2),
                ["ID", "STATUS", "RELEASE", "STARTED", "ELAPSED", "DESCRIPTION"], 0)
    r = sw("builds", "info", "b_nosuch")
    t.check("builds info of an unknown build: exit 1", r.rc == 1 and "b_nosuch" in r.err, r)
    return r1


def logs_section(co, host, key):
    """Events go in through the agent protocol's log endpoint (a protocol-speaking
    agent in a fleet of its own), and come out through `slipway logs`."""
    pa = ProtoAgent(co, "cli-logs-" + env.run, fleet="logs")
    st, _ = pa.register()
    now = int(time.time() * 1000)

    def ship(msgs, service="web", at=None):
        return pa.call("POST", "logs", body={"streams": [{
            "app": APP2, "service": service, "container": "c0ffee0123456789abcd",
            "release": "r_x", "events": [{"ts_ms": (at or now) + i, "stream": "stdout",
                                          "message": m} for i, m in enumerate(msgs)]}]})
    st2, _, _ = ship(["first line", "second \x1b[31mline"])
    ship(["worker says hi"], service="worker", at=now + 10)
    r = sw("logs", APP2)
    lines = r.out.splitlines()
    t.check("logs: exit 0, one line per event: TIME SERVICE[CONTAINER]: MESSAGE",
            st == 200 and r.rc == 0 and len(lines) == 3
            and lines[0].endswith(" web[c0ffee012345]: first line")
            and lines[1].endswith(" web[c0ffee012345]: second ?[31mline")
            and lines[2].endswith(" worker[c0ffee012345]: worker says hi")
            and lines[0][:4].isdigit() and lines[0][23] == "Z", (st, st2, r))
    r = sw("logs", APP2, "--service", "worker", "--since", "1h")
    t.check("logs --service --since", r.rc == 0 and r.out.count("\n") == 1
            and "worker says hi" in r.out, r)
    doc = parses(sw("logs", APP2, "--json", "--limit", "2"))
    t.check("logs --json parses (--limit: the newest)",
            doc and [e["message"] for e in doc["events"]] == ["second \x1b[31mline",
                                                              "worker says hi"], doc)
    r = sw("logs", "nosuch")
    t.check("logs of an unknown app: exit 1", r.rc == 1 and "unknown app nosuch" in r.err, r)
    r = sw("logs", APP2, "--since", "yesterday")
    t.check("logs with a bad --since: exit 1, the coordinator's reason",
            r.rc == 1 and "since:" in r.err, r)
    p = subprocess.Popen([SLIPWAY, "logs", APP2, "--follow", "--service", "web"],
                         env=DEFAULT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        first = p.stdout.readline()
        ship(["followed line"], at=now + 100)
        seen = [first]
        deadline = time.time() + 20
        while time.time() < deadline and "followed line" not in seen[-1]:
            seen.append(p.stdout.readline())
        t.check("logs --follow prints the tail, then new events as they come",
                "first line" in first and "followed line" in seen[-1], seen)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = None
    t.check("logs --follow ends on SIGINT with exit 130", rc == 130, rc)


def wait_ps(app, want, timeout=30):
    """The ps rows of app once `want(rows)` holds (the agents report every few s)."""
    def ok():
        r = sw("ps", app)
        _, rows, _ = table(r.out)
        return rows if r.rc == 0 and want(rows) else None
    return L.wait_for(ok, timeout, 0.5)


def deploy_section(co, host, key, agent_instance):
    listen = L.free_port()
    v1 = "cli-v1-" + env.run
    v2 = "cli-v2-" + env.run
    d1 = project("p1", v1, listen)
    r = sw("deploy", d1, "--app", APP, "--wait", "--description", "first deploy",
           timeout=900)
    ok = t.check("deploy --wait: exit 0 once the release is live on the instance",
                 r.rc == 0 and "Packed " in r.out and f"Uploading to {APP}" in r.out
                 and "is live on 1 instance" in r.out, r)
    if not ok:
        print("# rollouts: " + json.dumps(co.call("GET", f"/v1/apps/{APP}/rollouts",
                                                  token=key)[1]))
        print("# agents: " + json.dumps(co.call("GET", "/v1/agents", token=key)[1]))
    t.check("deploy streams the build log", "uploaded context" in r.out
            and "docker build" in r.out, r.out[-3000:])
    t.check("the new version serves through the agent's proxy",
            L.wait_for(lambda: f"hello from {v1}" in get(listen), 10), get(listen))

    rows = check_table("builds", sw("builds", APP),
                       ["ID", "STATUS", "RELEASE", "STARTED", "ELAPSED", "DESCRIPTION"], 1)
    b1 = rows[0] if rows else {}
    t.check("builds: the upload, complete, with its release and times",
            b1.get("STATUS") == "complete" and b1.get("RELEASE", "").startswith("r_")
            and b1.get("DESCRIPTION") == "first deploy"
            and (b1.get("STARTED") == "just now" or b1.get("STARTED", "").endswith("ago"))
            and b1.get("ELAPSED", "-")[-1:] == "s", rows)
    doc = parses(sw("builds", APP, "--json"))
    t.check("builds --json parses", doc and doc["builds"][0]["id"] == b1.get("ID"), doc)
    r = sw("builds", "info", b1.get("ID", "b_?"))
    t.check("builds info: the fields, then the log",
            r.rc == 0 and f"Build:        {b1.get('ID')}" in r.out
            and "Status:       complete" in r.out and "Source:       upload" in r.out
            and "Images:       web: " in r.out and "uploaded context" in r.out, r)
    r1 = b1.get("RELEASE")

    def running_v(rel):
        return lambda rows: [x for x in rows if x["RELEASE"] == rel
                             and x["STATUS"].startswith("running")]
    ps_rows = wait_ps(APP, running_v(r1))
    t.check("ps shows the running container the agent reported", bool(ps_rows), ps_rows)
    rows = check_table("ps", sw("ps", "--app", APP),
                       ["ID", "APP", "SERVICE", "RELEASE", "INSTANCE", "STATUS", "STARTED",
                        "COMMAND"], 1)
    mine = [x for x in rows if x["RELEASE"] == r1]
    t.check("ps: app, service, release, instance, started",
            mine and mine[0]["APP"] == APP and mine[0]["SERVICE"] == "web"
            and mine[0]["INSTANCE"] == agent_instance and len(mine[0]["ID"]) == 12
            and mine[0]["STARTED"] != "-", rows)
    doc = parses(sw("ps", "--json"))
    t.check("ps --json parses", doc and any(c.get("release") == r1 for c in doc["containers"]),
            doc)
    rows = check_table("agents", sw("agents"),
                       ["ID", "INSTANCE", "HOSTNAME", "FLEET", "STATE", "VERSION", "SEEN",
                        "APPS"], 1)
    ag = [x for x in rows if x["INSTANCE"] == agent_instance]
    t.check("agents: our agent, live, converged on the app",
            ag and ag[0]["STATE"] == "live" and ag[0]["FLEET"] == "default"
            and f"{APP}:converged" in ag[0]["APPS"], rows)
    t.check("agents --json parses", parses(sw("agents", "--json")) is not None)

    d2 = project("p2", v2, listen)
    r = sw("deploy", d2, "--wait", e=dict(DEFAULT_ENV, SLIPWAY_APP=APP), timeout=900)
    t.check("a second deploy (app from SLIPWAY_APP) --wait: exit 0",
            r.rc == 0 and "is live on 1 instance" in r.out, r)
    t.check("and the new version serves",
            L.wait_for(lambda: f"hello from {v2}" in get(listen), 10), get(listen))
    st, b, _ = co.call("GET", f"/v1/apps/{APP}", token=key)
    r2 = b.get("release")

    r = sw("releases", "rollback", r1, "--app", APP, "--wait", timeout=300)
    t.check("releases rollback --wait: exit 0, live", r.rc == 0 and "is live on 1 instance"
            in r.out, r)
    t.check("and the old version serves again",
            L.wait_for(lambda: f"hello from {v1}" in get(listen), 10), get(listen))
    r = sw("releases", "promote", r2, "--app", APP, "--wait", timeout=300)
    t.check("releases promote --wait: exit 0", r.rc == 0 and "is live on 1 instance" in r.out, r)
    t.check("and that version serves",
            L.wait_for(lambda: f"hello from {v2}" in get(listen), 10), get(listen))

    r = sw("scale", APP, "web", "--count", "2", "--wait", timeout=300)
    t.check("scale --count 2 --wait: exit 0", r.rc == 0 and "is live on 1 instance" in r.out, r)
    st, b, _ = co.call("GET", f"/v1/apps/{APP}", token=key)
    r_scaled = b.get("release")
    two = wait_ps(APP, lambda rows: len(running_v(r_scaled)(rows)) == 2)
    t.check("ps shows two running containers of the scaled release", bool(two), two)

    d3 = project("p3", "cli-v3-" + env.run, listen, extra_env={"HEALTH_FAIL": "1"},
                 grace="3s")
    r = sw("deploy", d3, "--app", APP, "--wait", timeout=900)
    t.check("deploy --wait of a release that never becomes healthy: exit 1, rolled back",
            r.rc == 1 and "rolled back" in r.err, r)
    t.check("and the previous version keeps serving", f"hello from {v2}" in get(listen),
            get(listen))
    d4 = project("p4", "cli-v4-" + env.run, listen, dockerfile_tail="RUN exit 3\n")
    r = sw("deploy", d4, "--app", APP, "--wait", timeout=900)
    t.check("deploy of a build that fails: exit 1, names the build",
            r.rc == 1 and "build b_" in r.err and "failed" in r.err, r)
    r = sw("deploy", d2, "--app", APP, timeout=900)
    t.check("deploy without --wait: exit 0 once the rollout started",
            r.rc == 0 and "is rolling out (rollout ro_" in r.out, r)
    r = sw("deploy", d2, "--app", "nosuch")
    t.check("deploy to an unknown app: exit 1", r.rc == 1 and "unknown app nosuch" in r.err, r)
    empty = os.path.join(env.tmp, "empty")
    os.makedirs(empty)
    r = sw("deploy", empty, "--app", APP)
    t.check("deploy of a directory without slipway.yml: exit 1 before uploading",
            r.rc == 1 and "no slipway.yml" in r.err and "Uploading" not in r.out, r)
    d5 = project("p5", "cli-v5-" + env.run, listen)
    write(os.path.join(d5, ".dockerignore"), "*.yml\n")
    r = sw("deploy", d5, "--app", APP)
    t.check("deploy refuses a .dockerignore that leaves slipway.yml out: exit 1",
            r.rc == 1 and "excludes slipway.yml" in r.err and "Uploading" not in r.out, r)
    r = sw("deploy", d2)
    t.check("deploy without an app: exit 2", r.rc == 2 and "which app?" in r.err, r)
    leftovers = [n for n in os.listdir(os.environ.get("TMPDIR", "/tmp"))
                 if n.startswith("slipway-deploy-")]
    t.check("deploy leaves no temporary archive behind", not leftovers, leftovers)


def link_section(co, host, key):
    gl = FakeGitLab(["glpat-good-token"], [{
        "path": "group/web", "id": 42, "default_branch": "main",
        "ssh_url_to_repo": "git@gitlab.example:group/web.git"}]).start()
    try:
        tok = os.path.join(env.tmp, "gitlab-token")
        write(tok, "glpat-good-token\n")
        args = ["apps", "link", APP2, "--gitlab-url", gl.url, "--project", "group/web",
                "--token-file", tok, "--deploy", "branch"]
        r = sw(*args)
        t.check("apps link: exit 0, the key and the hook it set up",
                r.rc == 0 and f"Linked {APP2} to group/web on {gl.url}." in r.out
                and "Repository:  git@gitlab.example:group/web.git" in r.out
                and "pushes to main (the project's default branch)" in r.out
                and "Deploy key:  SHA256:" in r.out and "added, read-only" in r.out
                and "Webhook:     GitLab id" in r.out and "created" in r.out, r)
        t.check("the token is never printed", "glpat-good-token" not in r.out + r.err, r)
        r = sw(*args)
        t.check("apps link again: harmless, nothing added twice",
                r.rc == 0 and "already there" in r.out and "brought up to date" in r.out
                and len(gl.state.keys.get(42, [])) == 1 and len(gl.state.hooks.get(42, [])) == 1,
                (r, gl.state.keys, gl.state.hooks))
        r = sw("apps", "info", APP2)
        t.check("apps info shows the link", "GitLab:      linked to group/web" in r.out, r)
        bad = os.path.join(env.tmp, "gitlab-bad-token")
        write(bad, "glpat-wrong\n")
        r = sw("apps", "link", APP, "--gitlab-url", gl.url, "--project", "group/web",
               "--token-file", bad)
        t.check("apps link with a token GitLab refuses: exit 1, GitLab's reason",
                r.rc == 1 and "GitLab refused the token" in r.err, r)
        r = sw("apps", "link", APP, "--gitlab-url", gl.url, "--project", "group/web")
        t.check("apps link without --token-file: exit 2", r.rc == 2, r)
        r = sw("apps", "unlink", APP2)
        t.check("apps unlink: exit 0, hook and key removed",
                r.rc == 0 and r.out == f"Unlinked {APP2} from GitLab (webhook removed, deploy "
                                       "key removed).\n"
                and not gl.state.keys.get(42) and not gl.state.hooks.get(42),
                (r, gl.state.keys, gl.state.hooks))
        r = sw("apps", "unlink", APP2)
        t.check("apps unlink of an unlinked app: exit 0, nothing to do",
                r.rc == 0 and "was not linked" in r.out, r)
        t.check("GitLab saw no protocol violation", not gl.state.violations,
                gl.state.violations)
    finally:
        gl.stop()


def delete_section():
    r = sw("apps", "delete", APP2, stdin="")
    t.check("apps delete without --confirm off a terminal: exit 2",
            r.rc == 2 and f"--confirm {APP2}" in r.err, r)
    r = sw("apps", "delete", APP2, "--confirm", "other")
    t.check("apps delete with the wrong confirmation: exit 1, nothing deleted",
            r.rc == 1 and APP2 in sw("apps").out, r)
    r = sw("apps", "delete", APP2, "--confirm", APP2)
    t.check("apps delete: exit 0", r.rc == 0 and r.out.startswith(f"Deleted app {APP2} ("), r)
    t.check("and it is gone", APP2 not in sw("apps").out)


def tls_section():
    """A coordinator serving HTTPS with a certificate from a private CA."""
    d = os.path.join(env.tmp, "tls")
    os.makedirs(d)

    def ossl(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=slipway test CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
         "-subj", "/CN=127.0.0.1")
    write(os.path.join(d, "ext"), "subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext")
    with Coordinator(extra={"server.tls_cert": os.path.join(d, "srv.pem"),
                            "server.tls_key": os.path.join(d, "srv.key")}) as tco:
        host = f"https://127.0.0.1:{tco.port}"
        r = sw("apps", e=cli_env(host, tco.admin_key))
        t.check("TLS with a certificate from an unknown CA: exit 1, points at SLIPWAY_CA_FILE",
                r.rc == 1 and "TLS verification" in r.err and "SLIPWAY_CA_FILE" in r.err, r)
        r = sw("apps", e=cli_env(host, tco.admin_key,
                                 SLIPWAY_CA_FILE=os.path.join(d, "ca.pem")))
        t.check("with SLIPWAY_CA_FILE naming the CA: exit 0", r.rc == 0 and "APP" in r.out, r)


def main():
    with Coordinator(extra={"docker.socket": L.DOCKER_SOCK, "registry.host": REGISTRY,
                            "queue.lease": "30s"}) as co:
        host = f"http://127.0.0.1:{co.port}"
        key = co.admin_key
        tmpdir = os.path.join(env.tmp, "t")
        os.makedirs(tmpdir)
        DEFAULT_ENV.update(cli_env(host, key, TMPDIR=tmpdir))
        os.environ["TMPDIR"] = tmpdir  # what the leftover check looks at
        try:
            usage_and_connection(co, host, key)
            login(host, key)
            apps_section(co, host, key)
            releases_env_section(co, host, key)
            logs_section(co, host, key)
            link_section(co, host, key)
            agent = env.agent(CoordForAgent(co), instance="node").start()
            node = "node-" + env.run
            reg = L.wait_for(lambda: [a for a in CoordForAgent(co).agents()
                                      if a["instance_id"] == node and a["state"] == "live"],
                             30, 0.1)
            t.check("the real agent registers", bool(reg), agent.log_text()[-2000:])
            if reg:
                deploy_section(co, host, key, node)
            delete_section()
        except Exception as exc:  # a crash is a failure with its story, not a silent stop
            import traceback
            t.fail("the test ran to its end", traceback.format_exc() + "\n" + co.log_tail())
            raise exc
        finally:
            subprocess.run(["sh", "-c", "ids=$(docker images -q --filter "
                            f"label=slipway.app={APP} | sort -u); "
                            "[ -z \"$ids\" ] || docker rmi -f $ids >/dev/null 2>&1"],
                           env=dict(os.environ, DOCKER_HOST="unix://" + L.DOCKER_SOCK))
    tls_section()


try:
    main()
finally:
    env.close()
t.plan(t.n)
sys.exit(t.done())
