#!/usr/bin/env python3
"""init/: the instance packaging, checked with the tools that consume it.

- systemd units: installed by init/install-agent.sh into a temporary root
  (with the machine's own systemd units beside them), then
  `systemd-analyze verify --root` on each (its warnings count as failures),
  `systemd-analyze security --offline` for the exposure score, and the
  settings the design depends on; `systemd-sysusers --root` creates the users.
- cloud-init user-data: rendered by cloud-init itself (Jinja, with instance
  data standing for EC2's), `cloud-init schema`; its bootstrap script runs in
  the temporary root with a bundle from init/bundle.sh (file:// URL) and a
  stand-in systemctl; the agent.conf it writes passes `slipway-agent --check`.
- Packer: `packer validate` (Debian's packer 1.6) with a real bundle.
- init/examples: every key of both schemas is there, and both files pass
  `--check`, also with every default uncommented.
cloud-init, packer and systemd are Debian packages; missing ones are
installed here (as root), as the brief for init/ asks.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import Tap  # noqa: E402

TOP = os.environ.get("SLIPWAY_TOP") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SLIPWAY_BUILD", os.path.join(TOP, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(TOP, BUILD)
# SLIPWAY_AGENT_BIN: another agent binary (the static one), as in agentlib.py.
AGENT = os.path.join(TOP, os.environ.get("SLIPWAY_AGENT_BIN") or os.path.join(BUILD, "slipway-agent"))
COORD = os.path.join(BUILD, "slipway-coordinator")
INIT = os.path.join(TOP, "init")
UNITS = os.path.join(INIT, "systemd")

t = Tap(40)
tmp = tempfile.mkdtemp(prefix="slipway-init-")


def run(args, env=None, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=e, **kw)


def ensure(cmd, package):
    """The command, installing its Debian package when it is missing."""
    if shutil.which(cmd):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    e = {"DEBIAN_FRONTEND": "noninteractive"}
    r = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=e)
    if r.returncode != 0:
        run(["apt-get", "update", "-q"], env=e)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=e)
    return shutil.which(cmd) is not None


def unit_settings(path):
    """{key: [values]} of a unit file (all sections together)."""
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def verify(root, units):
    r = run(["systemd-analyze", "verify", "--man=no", f"--root={root}"] +
            [os.path.join(root, "etc/systemd/system", u) for u in units])
    return r.returncode, (r.stdout + r.stderr).strip()


try:
    have = {c: ensure(c, p) for c, p in
            (("systemd-analyze", "systemd"), ("cloud-init", "cloud-init"), ("packer", "packer"))}
    t.check("systemd-analyze, cloud-init and packer are installed", all(have.values()),
            json.dumps(have))
    t.check("the daemons are built", os.access(AGENT, os.X_OK) and os.access(COORD, os.X_OK),
            f"{AGENT} {COORD}: run make first")

    # ---- bundle ----
    bundle = os.path.join(tmp, "bundle.tar.gz")
    b1 = run(["sh", os.path.join(INIT, "bundle.sh"), AGENT, bundle])
    sha = b1.stdout.strip().splitlines()[-1] if b1.returncode == 0 else ""
    b2 = run(["sh", os.path.join(INIT, "bundle.sh"), AGENT, os.path.join(tmp, "again.tar.gz")])
    real = hashlib.sha256(open(bundle, "rb").read()).hexdigest() if b1.returncode == 0 else "-"
    t.check("bundle.sh packs the agent; the archive is reproducible and its SHA-256 printed",
            b1.returncode == 0 and sha == real and b2.stdout.strip().endswith(sha),
            b1.stdout + b1.stderr + b2.stdout)
    listing = run(["tar", "-tzf", bundle]).stdout.split()
    t.check("the bundle holds the binary, both scripts, the units and the example",
            {"slipway-agent/slipway-agent", "slipway-agent/install-agent.sh",
             "slipway-agent/upgrade-agent.sh", "slipway-agent/systemd/slipway-agent.service",
             "slipway-agent/systemd/slipway-proxy@.service",
             "slipway-agent/systemd/slipway-agent.sysusers",
             "slipway-agent/examples/agent.conf"} <= set(listing), "\n".join(listing))

    # ---- install-agent.sh into a temporary root ----
    root = os.path.join(tmp, "root")
    r = run(["sh", os.path.join(INIT, "install-agent.sh"), "--root", root, "--binary", AGENT])
    t.check("install-agent.sh --root installs", r.returncode == 0, r.stdout + r.stderr)
    modes = {p: oct(os.stat(os.path.join(root, p)).st_mode & 0o7777)
             if os.path.exists(os.path.join(root, p)) else None for p in (
        "usr/local/bin/slipway-agent", "etc/systemd/system/slipway-agent.service",
        "etc/systemd/system/slipway-proxy@.service", "etc/sysusers.d/slipway-agent.conf",
        "usr/local/sbin/slipway-upgrade-agent", "usr/local/share/slipway/agent.conf.example")}
    want = ["0o755", "0o644", "0o644", "0o644", "0o755", "0o644"]
    t.check("installed files and modes", list(modes.values()) == want, json.dumps(modes))
    fake = os.path.join(tmp, "not-an-agent")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\nexit 1\n")
    os.chmod(fake, 0o755)
    before = open(os.path.join(root, "usr/local/bin/slipway-agent"), "rb").read()
    r = run(["sh", os.path.join(INIT, "install-agent.sh"), "--root", root, "--binary", fake])
    t.check("install-agent.sh refuses a binary whose selftest fails, and keeps the installed one",
            r.returncode != 0 and "selftest" in r.stderr and
            open(os.path.join(root, "usr/local/bin/slipway-agent"), "rb").read() == before,
            r.stdout + r.stderr)

    # ---- systemd-analyze verify ----
    # The machine's units (targets, docker.service, ...) beside ours, and the
    # coordinator installed by hand the way docs/operations.md says.
    os.makedirs(os.path.join(root, "usr/lib/systemd"), exist_ok=True)
    shutil.copytree("/lib/systemd/system", os.path.join(root, "usr/lib/systemd/system"),
                    symlinks=True, dirs_exist_ok=True)
    shutil.copy2(COORD, os.path.join(root, "usr/local/bin/slipway-coordinator"))
    shutil.copy2(os.path.join(UNITS, "slipway-coordinator.service"),
                 os.path.join(root, "etc/systemd/system/"))
    for unit in ("slipway-agent.service", "slipway-proxy@a.service", "slipway-proxy@b.service",
                 "slipway-coordinator.service"):
        rc, out = verify(root, [unit])
        t.check(f"systemd-analyze verify {unit}: no error, no warning", rc == 0 and out == "",
                f"exit {rc}\n{out}")
    # The check can fail: a broken copy and a missing binary are reported.
    broken = os.path.join(tmp, "broken")
    shutil.copytree(root, broken, symlinks=True)
    p = os.path.join(broken, "etc/systemd/system/slipway-proxy@.service")
    text = open(p).read().replace("WatchdogSec=30s", "WatchdogSec=soon")
    open(p, "w").write(text)
    os.unlink(os.path.join(broken, "usr/local/bin/slipway-coordinator"))
    rc1, out1 = verify(broken, ["slipway-proxy@a.service"])
    rc2, out2 = verify(broken, ["slipway-coordinator.service"])
    t.check("negative control: verify reports a bad value and a missing binary",
            "ignoring: soon" in out1 and "slipway-coordinator is not executable" in out2,
            out1 + out2)

    scores = {}
    for f in ("slipway-agent.service", "slipway-proxy@.service", "slipway-coordinator.service"):
        r = run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager",
                 os.path.join(root, "etc/systemd/system", f)])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        scores[f] = float(m.group(1)) if m else None
    print(f"# systemd-analyze security --offline exposure (0 best, 10 worst): {scores}")
    t.check("exposure score of every unit is at most 2.5 ('OK')",
            all(s is not None and s <= 2.5 for s in scores.values()), json.dumps(scores))

    agent_u = unit_settings(os.path.join(UNITS, "slipway-agent.service"))
    proxy_u = unit_settings(os.path.join(UNITS, "slipway-proxy@.service"))
    coord_u = unit_settings(os.path.join(UNITS, "slipway-coordinator.service"))
    common = {"Type": ["notify"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"],
              "ProtectHome": ["yes"], "PrivateTmp": ["yes"], "WatchdogSec": ["30s"]}
    bad = [(n, k, u.get(k)) for n, u in (("agent", agent_u), ("proxy", proxy_u),
                                         ("coordinator", coord_u))
           for k, v in common.items() if u.get(k) != v]
    t.check("every unit: Type=notify, WatchdogSec, NoNewPrivileges, ProtectSystem=strict, "
            "ProtectHome, PrivateTmp", not bad, json.dumps(bad))
    t.check("writable only where state lives",
            agent_u.get("ReadWritePaths") == ["/var/lib/slipway-agent"] and
            proxy_u.get("ReadWritePaths") == ["/var/lib/slipway-agent"] and
            coord_u.get("ReadWritePaths") == ["/var/lib/slipway"],
            json.dumps([agent_u.get("ReadWritePaths"), proxy_u.get("ReadWritePaths"),
                        coord_u.get("ReadWritePaths")]))
    t.check("restart: always for the agent and the coordinator; the proxy slots on failure",
            agent_u.get("Restart") == ["always"] and coord_u.get("Restart") == ["always"] and
            proxy_u.get("Restart") == ["on-failure"],
            json.dumps([agent_u.get("Restart"), proxy_u.get("Restart"), coord_u.get("Restart")]))
    t.check("dedicated users; Docker through group docker for the agent and the coordinator only",
            agent_u.get("User") == ["slipway-agent"] and proxy_u.get("User") == ["slipway-agent"]
            and coord_u.get("User") == ["slipway"] and
            agent_u.get("SupplementaryGroups") == ["docker"] and
            coord_u.get("SupplementaryGroups") == ["docker"] and
            "SupplementaryGroups" not in proxy_u,
            json.dumps([agent_u.get("User"), proxy_u.get("User"), coord_u.get("User")]))
    t.check("capabilities: none for agent and coordinator, CAP_NET_BIND_SERVICE for the proxy",
            agent_u.get("CapabilityBoundingSet") == [""] and
            coord_u.get("CapabilityBoundingSet") == [""] and
            proxy_u.get("CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"] and
            proxy_u.get("AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"],
            json.dumps([agent_u.get("CapabilityBoundingSet"),
                        proxy_u.get("CapabilityBoundingSet")]))
    t.check("LimitNOFILE high for the proxy and the coordinator",
            int(proxy_u["LimitNOFILE"][0]) >= 1 << 20 and int(coord_u["LimitNOFILE"][0]) >= 1 << 20,
            json.dumps([proxy_u.get("LimitNOFILE"), coord_u.get("LimitNOFILE")]))
    env_lines = agent_u.get("Environment", [])
    t.check("the agent unit never spawns a proxy into its cgroup and gets the token as a "
            "credential", "SLIPWAY_AGENT_PROXY_SPAWN=false" in env_lines and
            "SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN_FILE=%d/bootstrap-token" in env_lines and
            agent_u.get("LoadCredential") == ["bootstrap-token:/etc/slipway/bootstrap-token"],
            json.dumps(env_lines))

    # ---- sysusers ----
    sysroot = os.path.join(tmp, "sysroot")
    os.makedirs(os.path.join(sysroot, "etc"))
    sysconf = []
    for f in ("slipway-agent.sysusers", "slipway.sysusers"):
        sysconf.append(os.path.join(UNITS, f))
    r = run(["systemd-sysusers", f"--root={sysroot}"] + sysconf)
    passwd = open(os.path.join(sysroot, "etc/passwd")).read() if r.returncode == 0 else ""
    group = open(os.path.join(sysroot, "etc/group")).read() if r.returncode == 0 else ""
    docker_members = re.search(r"^docker:x:\d+:(.*)$", group, re.M)
    t.check("systemd-sysusers creates slipway-agent and slipway, both in group docker",
            re.search(r"^slipway-agent:x:\d+:\d+:[^:]*:/var/lib/slipway-agent:/usr/sbin/nologin$",
                      passwd, re.M) and
            re.search(r"^slipway:x:\d+:\d+:[^:]*:/var/lib/slipway:/usr/sbin/nologin$", passwd, re.M)
            and docker_members and
            set(docker_members.group(1).split(",")) == {"slipway-agent", "slipway"},
            r.stdout + r.stderr + passwd + group)

    # ---- cloud-init ----
    instance = os.path.join(tmp, "instance-data.json")
    with open(instance, "w") as f:
        json.dump({"v1": {"region": "eu-west-1", "instance_id": "i-0123456789abcdef0",
                          "cloud_name": "aws", "platform": "ec2"}}, f)
    r = run(["cloud-init", "devel", "render", "-i", instance,
             os.path.join(INIT, "cloud-init", "agent.yaml")])
    rendered = os.path.join(tmp, "agent.rendered.yaml")
    open(rendered, "w").write(r.stdout)
    t.check("cloud-init renders the user-data with the instance's region and id",
            r.returncode == 0 and r.stdout.startswith("#cloud-config") and
            'cloudwatch.region = "eu-west-1"' in r.stdout and
            'agent.instance_id = "i-0123456789abcdef0"' in r.stdout and
            "CI_MISSING_JINJA_VAR" not in r.stdout, r.stderr + r.stdout[:500])
    s = run(["cloud-init", "schema", "--config-file", rendered])
    t.check("cloud-init schema: valid cloud-config", s.returncode == 0 and
            "Valid cloud-config" in s.stdout, s.stdout + s.stderr)
    bad_yaml = os.path.join(tmp, "bad.yaml")
    open(bad_yaml, "w").write(r.stdout.replace('permissions: "0600"', "permissions: 0600", 1))
    s2 = run(["cloud-init", "schema", "--config-file", bad_yaml])
    t.check("negative control: cloud-init schema refuses a bad value",
            s2.returncode != 0 and "permissions" in s2.stdout + s2.stderr, s2.stdout + s2.stderr)
    import yaml  # python3-yaml: a dependency of Debian's cloud-init
    doc = yaml.safe_load(r.stdout)
    t.check("top-level keys are write_files and runcmd only (cloud-init ignores unknown ones)",
            set(doc) == {"write_files", "runcmd"}, json.dumps(sorted(doc)))
    files = {w["path"]: w for w in doc["write_files"]}
    t.check("config 0644, token 0600, install settings 0600, bootstrap script 0700",
            [files.get(p, {}).get("permissions") for p in (
                "/etc/slipway/agent.conf", "/etc/slipway/bootstrap-token",
                "/etc/slipway/install.env", "/usr/local/lib/slipway/bootstrap.sh")] ==
            ["0644", "0600", "0600", "0700"], json.dumps(sorted(files)))

    def boot(name, source, sha256, token):
        """Writes the user-data's files into a fresh root (as cloud-init would,
        with the operator's edits) and runs its bootstrap script there."""
        broot = os.path.join(tmp, name)
        calls = os.path.join(tmp, name + ".systemctl")
        for path, w in files.items():
            content = w["content"]
            if path.endswith("install.env"):
                content = re.sub(r"(?m)^SLIPWAY_AGENT_SOURCE=.*$",
                                 f"SLIPWAY_AGENT_SOURCE={source}   # edited", content)
                content = re.sub(r"(?m)^SLIPWAY_AGENT_SHA256=.*$",
                                 f"SLIPWAY_AGENT_SHA256={sha256}", content)
            if path.endswith("bootstrap-token") and token:
                content = token
            dest = broot + path
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as f:
                f.write(content)
            os.chmod(dest, int(w["permissions"], 8))
        fake = os.path.join(tmp, name + "-systemctl")
        with open(fake, "w") as f:
            f.write(f'#!/bin/sh\necho "$*" >>{calls}\n'
                    '[ "$1" != is-active ] || exit 3\n')
        os.chmod(fake, 0o755)
        cmd = doc["runcmd"][0]
        script = broot + cmd[1]
        res = run(cmd[:1] + [script], env={"SLIPWAY_ROOT": broot, "SLIPWAY_SYSTEMCTL": fake})
        sent = open(calls).read().splitlines() if os.path.exists(calls) else []
        return broot, res, sent

    broot, res, sent = boot("boot-url", "file://" + bundle, sha, "fleet-token-for-tests")
    t.check("bootstrap with a bundle URL: exit 0, the agent installed from the bundle",
            res.returncode == 0 and
            open(os.path.join(broot, "usr/local/bin/slipway-agent"), "rb").read() ==
            open(AGENT, "rb").read() and
            os.path.exists(os.path.join(broot, "etc/systemd/system/slipway-proxy@.service")),
            res.stdout + res.stderr)
    t.check("bootstrap: proxy slot a started before the agent, both enabled",
            sent == ["enable --now docker.service", "daemon-reload",
                     "enable slipway-agent.service slipway-proxy@a.service",
                     "is-active --quiet slipway-proxy@a.service",
                     "is-active --quiet slipway-proxy@b.service",
                     "start slipway-proxy@a.service", "start slipway-agent.service"],
            "\n".join(sent))
    conf = os.path.join(broot, "etc/slipway/agent.conf")
    tok = os.path.join(broot, "etc/slipway/bootstrap-token")
    c = run([AGENT, "--check", "--config", conf],
            env={"SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN_FILE": tok})
    t.check("the agent.conf cloud-init writes passes slipway-agent --check (token as a file)",
            c.returncode == 0 and re.search(r'cloudwatch\.region\s+= "eu-west-1"', c.stdout) and
            re.search(r"proxy\.spawn\s+= false", c.stdout) and "[secret]" in c.stdout,
            c.stdout + c.stderr)
    t.check("the token file is 0600", oct(os.stat(tok).st_mode & 0o777) == "0o600",
            oct(os.stat(tok).st_mode))
    _, res, sent = boot("boot-placeholder", "file://" + bundle, sha, None)
    t.check("bootstrap refuses the placeholder token and starts nothing",
            res.returncode != 0 and "placeholder" in res.stderr and
            not [x for x in sent if x.startswith("start")], res.stderr + "\n".join(sent))
    broot, res, sent = boot("boot-badsum", "file://" + bundle, "0" * 64, "t0ken-for-tests")
    t.check("bootstrap refuses a bundle whose SHA-256 differs and installs nothing",
            res.returncode != 0 and "SHA-256" in res.stderr and
            not os.path.exists(os.path.join(broot, "usr/local/bin/slipway-agent")), res.stderr)
    _, res, sent = boot("boot-ami", "ami", "", "t0ken-for-tests")
    t.check("bootstrap with SLIPWAY_AGENT_SOURCE=ami on an AMI without the agent says so",
            res.returncode != 0 and "init/packer" in res.stderr, res.stderr)

    # ---- packer ----
    tpl = os.path.join(INIT, "packer", "agent.pkr.hcl")
    p = run(["packer", "validate", "-var", f"agent_bundle={bundle}", tpl])
    t.check("packer validate (Debian's packer 1.6) accepts the AMI template",
            p.returncode == 0, p.stdout + p.stderr)
    p2 = run(["packer", "validate", "-var", f"agent_bundle={bundle}", "-var", "arch=arm64", tpl])
    p3 = run(["packer", "validate", "-var", f"agent_bundle={tmp}/missing.tar.gz", tpl])
    t.check("packer validate: arm64 too; a missing bundle is refused",
            p2.returncode == 0 and p3.returncode != 0 and "missing.tar.gz" in p3.stdout + p3.stderr,
            p2.stdout + p2.stderr + p3.stdout + p3.stderr)

    # ---- examples ----
    token = os.path.join(tmp, "token")
    open(token, "w").write("example-token\n")
    for prog, binary, name, env_var in (
            ("agent", AGENT, "agent.conf", "SLIPWAY_AGENT_COORDINATOR_BOOTSTRAP_TOKEN_FILE"),
            ("coordinator", COORD, "coordinator.conf",
             "SLIPWAY_COORDINATOR_AGENTS_BOOTSTRAP_TOKEN_FILE")):
        helptext = run([binary, "--help"]).stdout
        keys = re.findall(r"(?m)^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+) \(", helptext)
        example = os.path.join(INIT, "examples", name)
        text = open(example).read()
        missing = [k for k in keys if not re.search(rf"(?m)^#?{re.escape(k)} =", text)]
        t.check(f"examples/{name} names every key of the {prog}'s schema ({len(keys)})",
                len(keys) > 20 and not missing,
                "missing (run init/examples/generate.sh): " + " ".join(missing))
        c1 = run([binary, "--check", "--config", example], env={env_var: token})
        full = os.path.join(tmp, "full-" + name)
        with open(full, "w") as f:
            f.write(re.sub(r'(?m)^#([a-z][a-z0-9_.]* = ".*")$', r"\1", text))
        c2 = run([binary, "--check", "--config", full], env={env_var: token})
        n_set = len(re.findall(r"# file:\d+", c2.stdout))
        t.check(f"examples/{name} passes --check, also with every default uncommented "
                f"({n_set} keys set)", c1.returncode == 0 and c2.returncode == 0 and n_set > 20,
                c1.stdout[-1500:] + c1.stderr + c2.stdout[-1500:] + c2.stderr)

    # ---- the scripts ----
    scripts = [os.path.join(INIT, f) for f in ("install-agent.sh", "bundle.sh",
                                              "examples/generate.sh")]
    if shutil.which("shellcheck"):
        r1 = run(["shellcheck", "-s", "sh"] + scripts)
        r2 = run(["shellcheck", "-s", "bash", os.path.join(INIT, "upgrade-agent.sh")])
        t.check("shellcheck: the init scripts are clean", r1.returncode == 0 and r2.returncode == 0,
                r1.stdout + r2.stdout)
    else:
        r = [run(["sh", "-n", s]).returncode for s in scripts]
        t.check("sh -n: the init scripts parse (shellcheck is not installed)", not any(r),
                json.dumps(r))
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(t.done())
