"""Shared pieces of the GitLab-link, Slack and secrets integration tests:
the fakes (tests/fakes/gitlab.py, slack.py) run in-process, a real sshd with a
bare git repository, and a reader for sealed store cells (tests/helpers/
secret_open). Standard library only.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from coord_proc import BUILD, TOP  # noqa: E402
from gitlab import FakeGitLab  # noqa: E402,F401
from slack import FakeSlack  # noqa: E402,F401

BUILD_DIR = BUILD if os.path.isabs(BUILD) else os.path.join(TOP, BUILD)
SECRET_OPEN = os.path.join(BUILD_DIR, "tests", "helpers", "secret_open")
SSHD = "/usr/sbin/sshd"
GL_TOKEN = "glpat-IntegrationToken-0123456789abcdef"


def wait_until(fn, timeout=20.0, step=0.05):
    """Polls fn until it returns something true; returns that (or the last value)."""
    deadline = time.time() + timeout
    value = fn()
    while not value and time.time() < deadline:
        time.sleep(step)
        value = fn()
    return value


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def secret_open(co, table, row, column):
    """The plaintext of a sealed cell (None when it does not open)."""
    db = os.path.join(co.data, "coordinator.db")
    key = os.path.join(co.data, "master.key")
    r = subprocess.run([SECRET_OPEN, db, key, table, row, column], capture_output=True)
    return r.stdout.decode() if r.returncode == 0 else None


def store_files(co):
    """Every file of the store (the database, its WAL and shared memory)."""
    return [os.path.join(co.data, f) for f in os.listdir(co.data)
            if f.startswith("coordinator.db")]


def found_in_files(paths, needle):
    """The files whose bytes contain needle (str or bytes)."""
    if isinstance(needle, str):
        needle = needle.encode()
    hits = []
    for p in paths:
        with open(p, "rb") as f:
            if needle in f.read():
                hits.append(os.path.basename(p))
    return hits


def hook_of(gl, pid=42):
    """The single webhook the fake holds for project pid (token included), or None."""
    hooks = gl.control()["hooks"].get(str(pid), [])
    return hooks[0] if len(hooks) == 1 else None


def push_payload(sha, project_id=42, path="group/web", ref="refs/heads/main", user="alice",
                 ssh_url=""):
    return {"object_kind": "push", "event_name": "push", "ref": ref,
            "before": "0" * 40, "after": sha, "checkout_sha": sha,
            "user_username": user, "user_name": user.title(),
            "project": {"id": project_id, "path_with_namespace": path,
                        "default_branch": "main", "git_ssh_url": ssh_url},
            "commits": [], "total_commits_count": 1}


def deliver(co, hook_id, token, payload, uuid=None):
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    if uuid:
        headers["X-Gitlab-Event-UUID"] = uuid
    return co.call("POST", "/hooks/gitlab/" + hook_id, headers=headers,
                   raw=json.dumps(payload).encode())


class SshGit:
    """A real sshd on 127.0.0.1:<free port> with its own host key, serving a bare
    repository with one commit; only keys put in authorized_keys get in."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="slipway-sshd-")
        self.port = None
        self.proc = None
        self.repo = os.path.join(self.dir, "web.git")
        self.auth = os.path.join(self.dir, "authorized_keys")
        open(self.auth, "w").close()
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()

    def url(self):
        return "ssh://%s@127.0.0.1:%d%s" % (self.user, self.port, self.repo)

    def git(self, *args, cwd=None, env=None):
        e = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
                 GIT_TERMINAL_PROMPT="0")
        e.update(env or {})
        return subprocess.run(["git"] + list(args), cwd=cwd, env=e, capture_output=True,
                              text=True)

    def start(self):
        host_key = os.path.join(self.dir, "host_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key],
                       check=True)
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        work = os.path.join(self.dir, "work")
        self.git("init", "-q", "--bare", "-b", "main", self.repo)
        self.git("init", "-q", "-b", "main", work)
        with open(os.path.join(work, "hello.txt"), "w") as f:
            f.write("served through sshd\n")
        self.git("add", "hello.txt", cwd=work)
        self.git("-c", "user.name=Alice", "-c", "user.email=alice@example.com", "commit",
                 "-q", "-m", "first", cwd=work)
        self.git("push", "-q", self.repo, "main", cwd=work)
        self.sha = self.git("rev-parse", "HEAD", cwd=work).stdout.strip()
        self.port = free_port()
        conf = os.path.join(self.dir, "sshd_config")
        with open(conf, "w") as f:
            f.write("\n".join([
                "Port %d" % self.port, "ListenAddress 127.0.0.1", "HostKey " + host_key,
                "PidFile " + os.path.join(self.dir, "sshd.pid"),
                "AuthorizedKeysFile " + self.auth, "StrictModes no", "UsePAM no",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
                "AllowUsers " + self.user, "LogLevel VERBOSE", ""]))
        self.log = open(os.path.join(self.dir, "sshd.log"), "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    return s.recv(64).startswith(b"SSH-")
            except OSError:
                return False
        if not wait_until(up, 10):
            raise RuntimeError("sshd did not start: " + self.log_text())
        return self

    def authorize(self, public_line):
        with open(self.auth, "a") as f:
            f.write(public_line.strip() + "\n")

    def clone(self, private_key_pem, dest):
        """git clone through GIT_SSH_COMMAND with ONLY this key; (ok, output)."""
        key = os.path.join(self.dir, "key-%d" % time.monotonic_ns())
        with open(key, "w") as f:
            f.write(private_key_pem)
        os.chmod(key, 0o600)
        ssh = ("ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o IdentityAgent=none "
               "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               "-o ConnectTimeout=10" % key)
        r = self.git("clone", "-q", self.url(), dest, env={"GIT_SSH_COMMAND": ssh,
                                                           "SSH_AUTH_SOCK": ""})
        return r.returncode == 0, r.stdout + r.stderr

    def log_text(self):
        try:
            with open(os.path.join(self.dir, "sshd.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
