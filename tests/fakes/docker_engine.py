#!/usr/bin/env python3
"""A fake Docker Engine for unit tests: HTTP/1.1 on a unix socket.

    docker_engine.py SOCKET_PATH [--profile old|new|toonew|ancient]

Prints "ready" on stdout once it listens. It answers the parts of the Engine
API that common/docker.c uses, with scripted behaviours picked by names:

  /version profiles: old (ApiVersion 1.41, MinAPIVersion 1.12, engine 20.10),
    new (1.52 / 1.44, Docker 29), toonew (1.62 / 1.60), ancient (1.40 / 1.12).
    Versioned paths outside the profile's range get 400 "client version ...".
  pull  tag v1: progress and "Digest:"; tag missing: 200 stream ending in an
        errorDetail; tag notfound: 404; tag garbage: invalid JSON line; tag
        huge: a 2 MiB line; tag concat: objects back to back without newlines.
  logs  container ids logs-normal, logs-truncated (ends inside a frame),
        logs-tty (raw), logs-drop (connection cut mid-stream), logs-hang (open),
        logs-many-N (N numbered lines "line 1" .. "line N" as fast as the
        client takes them; GET /_fake/logs_sent tells how many went out).
  containers: create/start/stop/kill/remove/inspect/list/wait/stats kept in
        memory (304 on start/stop of a container already in that state, 409 on
        a duplicate name or killing a stopped one, 404 on unknown ids);
        inspect of "boom" answers 500, of "huge" a 2 MiB document.
  events: buffered like the engine's (since= replays events with
        timeNano >= since), live subscribers get new events.
  build, push (repository names containing "fail" report an error in the
        stream), tag, image remove/list/inspect.
  info: /info with DockerRootDir /var/lib/docker.
  networks: create (201; 409 for a name in use), inspect and remove by id or
        name (404 unknown; 403 while a container named in its "Containers"
        uses it), list with name (substring, as the engine) and label filters.

Control requests (not recorded):
  GET  /_fake/requests          every request received, as JSON
  GET  /_fake/logs_sent         {"lines": N}: lines a logs-many stream has sent
  POST /_fake/reset             forget the recorded requests
  POST /_fake/event             {"event": {...}, "wait_subscribers": N}
  POST /_fake/drop_events       {"then_add": [events]}: cut every events stream
                                (no chunked terminator), then buffer events
  POST /_fake/restart           {"down_ms": N, "profile": P}: close the socket
                                and every connection, lose the event buffer,
                                come back on the same path after down_ms
"""
import json
import os
import queue
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

PROFILES = {
    "old": {"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24"},
    "new": {"ApiVersion": "1.52", "MinAPIVersion": "1.44", "Version": "29.0.0"},
    "toonew": {"ApiVersion": "1.62", "MinAPIVersion": "1.60", "Version": "40.0.0"},
    "ancient": {"ApiVersion": "1.40", "MinAPIVersion": "1.12", "Version": "19.03.15"},
}

DIGEST = "sha256:" + "ab" * 32
PUSH_DIGEST = "sha256:" + "cd" * 32
BUILT_ID = "sha256:" + "ef" * 32


def vnum(v):
    major, minor = v.split(".")
    return int(major) * 1000 + int(minor)


class State:
    def __init__(self, path, profile):
        self.path = path
        self.profile = profile
        self.lock = threading.Condition()
        self.requests = []
        self.containers = {}
        self.next_id = 1
        self.events = []
        self.subscribers = []
        self.conns = set()
        self.server = None
        self.networks = {}
        self.logs_sent = 0


STATE = None


def frame(stream, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class Subscriber:
    def __init__(self, filters):
        self.q = queue.Queue()
        self.filters = filters

    def wants(self, ev):
        types = self.filters.get("type")
        if types and ev.get("Type") not in types:
            return False
        attrs = ev.get("Actor", {}).get("Attributes", {})
        for want in self.filters.get("label", []):
            k, _, v = want.partition("=")
            if k not in attrs or ("=" in want and attrs[k] != v):
                return False
        return True


def make_event(action, cid, attrs=None, time_ns=None):
    t = time_ns if time_ns is not None else time.time_ns()
    a = {"name": cid}
    a.update(attrs or {})
    return {"status": action, "id": cid, "from": "img", "Type": "container",
            "Action": action, "Actor": {"ID": cid, "Attributes": a},
            "scope": "local", "time": t // 10**9, "timeNano": t}


def publish(ev):
    """Buffers an event and hands it to live subscribers (lock held by caller)."""
    STATE.events.append(ev)
    for s in STATE.subscribers:
        if s.wants(ev):
            s.q.put(ev)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        with STATE.lock:
            STATE.conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with STATE.lock:
            STATE.conns.discard(self.connection)

    # ---- plumbing ----

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=b"", ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Api-Version", STATE.profile["ApiVersion"])
        if status != 204 and status != 304:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204 and status != 304:
            self.wfile.write(body)

    def error(self, status, msg):
        self.send(status, {"message": msg})

    def start_chunked(self, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self):
        """Drops the connection without ending the chunked body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def lines(self, objs):
        self.start_chunked()
        for o in objs:
            self.chunk(o if isinstance(o, (str, bytes)) else json.dumps(o) + "\r\n")
        self.end_chunked()

    # ---- dispatch ----

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def handle_any(self, method):
        body = self.read_body()
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        path = url.path
        if path.startswith("/_fake/"):
            return self.control(method, path, body)
        with STATE.lock:
            STATE.requests.append({
                "method": method, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body[:65536].decode("utf-8", "replace"), "body_len": len(body),
            })
        if path == "/_ping":
            return self.send(200, "OK", "text/plain")
        if path == "/version":
            doc = dict(STATE.profile)
            doc.update({"Os": "linux", "Arch": "amd64"})
            return self.send(200, doc)
        parts = path.split("/")
        if len(parts) < 3 or not parts[1].startswith("v"):
            return self.error(404, "page not found")
        version = parts[1][1:]
        if vnum(version) > vnum(STATE.profile["ApiVersion"]):
            return self.error(400, "client version %s is too new. Maximum supported API "
                              "version is %s" % (version, STATE.profile["ApiVersion"]))
        if vnum(version) < vnum(STATE.profile["MinAPIVersion"]):
            return self.error(400, "client version %s is too old. Minimum supported API "
                              "version is %s" % (version, STATE.profile["MinAPIVersion"]))
        rest = "/" + "/".join(parts[2:])
        return self.route(method, rest, q, body)

    def route(self, method, rest, q, body):
        one = lambda k, d=None: q.get(k, [d])[0]
        p = rest.split("/")
        if rest == "/events" and method == "GET":
            return self.events(q)
        if rest == "/images/create" and method == "POST":
            return self.pull(one("fromImage"), one("tag"))
        if rest == "/build" and method == "POST":
            return self.build(q, body)
        if rest == "/containers/create" and method == "POST":
            return self.create(one("name"), body)
        if rest == "/containers/json" and method == "GET":
            return self.list_containers(q)
        if rest == "/images/json" and method == "GET":
            return self.send(200, [])
        if rest == "/info" and method == "GET":
            return self.send(200, {"ID": "fake", "Containers": len(STATE.containers),
                                   "DockerRootDir": "/var/lib/docker",
                                   "ServerVersion": STATE.profile["Version"]})
        if p[1] == "networks":
            return self.network(method, "/".join(p[2:]), q, body)
        if p[1] == "containers" and len(p) >= 3:
            return self.container(method, p[2], "/".join(p[3:]), q)
        if p[1] == "images" and len(p) >= 3:
            return self.image(method, "/".join(p[2:]), q)
        return self.error(404, "page not found")

    # ---- control ----

    def control(self, method, path, body):
        doc = json.loads(body) if body else {}
        if path == "/_fake/requests":
            with STATE.lock:
                return self.send(200, STATE.requests)
        if path == "/_fake/logs_sent":
            with STATE.lock:
                return self.send(200, {"lines": STATE.logs_sent})
        if path == "/_fake/reset":
            with STATE.lock:
                STATE.requests = []
            return self.send(200, {})
        if path == "/_fake/event":
            ev = doc["event"]
            with STATE.lock:
                deadline = time.time() + 10
                while len(STATE.subscribers) < doc.get("wait_subscribers", 0):
                    if not STATE.lock.wait(deadline - time.time()):
                        return self.error(504, "no subscriber came")
                publish(ev)
            return self.send(200, ev)
        if path == "/_fake/drop_events":
            with STATE.lock:
                subs = STATE.subscribers
                STATE.subscribers = []
                for ev in doc.get("then_add", []):
                    publish(ev)
            for s in subs:
                s.q.put(None)
            return self.send(200, {"dropped": len(subs)})
        if path == "/_fake/restart":
            self.send(200, {})
            self.wfile.flush()
            threading.Thread(target=restart, args=(doc.get("down_ms", 200),
                             doc.get("profile")), daemon=True).start()
            return None
        return self.error(404, "unknown control")

    # ---- events ----

    def events(self, q):
        filters = json.loads(q["filters"][0]) if "filters" in q else {}
        if isinstance(filters.get("label"), dict):  # the old map form
            filters["label"] = list(filters["label"])
        sub = Subscriber(filters)
        with STATE.lock:
            if "since" in q:
                sec, _, frac = q["since"][0].partition(".")
                since = int(sec) * 10**9 + int((frac + "000000000")[:9])
                for ev in STATE.events:
                    if ev["timeNano"] >= since and sub.wants(ev):
                        sub.q.put(ev)
            STATE.subscribers.append(sub)
            STATE.lock.notify_all()
        self.start_chunked()
        try:
            while True:
                ev = sub.q.get()
                if ev is None:
                    return self.cut()
                self.chunk(json.dumps(ev, separators=(",", ":")) + "\n")
        except OSError:
            self.close_connection = True
        finally:
            with STATE.lock:
                if sub in STATE.subscribers:
                    STATE.subscribers.remove(sub)

    # ---- images ----

    def pull(self, image, tag):
        if tag == "notfound":
            return self.error(404, "pull access denied for %s, repository does not exist" % image)
        start = {"status": "Pulling from " + image, "id": tag}
        if tag == "missing":
            msg = "manifest for %s:%s not found: manifest unknown: manifest unknown" % (image, tag)
            return self.lines([start, {"errorDetail": {"message": msg}, "error": msg}])
        if tag == "garbage":
            return self.lines([start, "{\"status\":\"Downloading\",}\n"])
        if tag == "huge":
            return self.lines([start, "{\"status\":\"" + "x" * (2 << 20) + "\"}\n"])
        progress = [
            start,
            {"status": "Pulling fs layer", "progressDetail": {}, "id": "0123"},
            {"status": "Downloading", "progressDetail": {"current": 100, "total": 200},
             "progress": "[=>  ] 100B/200B", "id": "0123"},
            {"status": "Pull complete", "progressDetail": {}, "id": "0123"},
            {"status": "Digest: " + DIGEST},
            {"status": "Status: Downloaded newer image for %s:%s" % (image, tag)},
        ]
        if tag == "concat":
            return self.lines(["".join(json.dumps(o) for o in progress)])
        return self.lines(progress)

    def build(self, q, body):
        if self.headers.get("Content-Type") != "application/x-tar":
            return self.error(400, "bad content type")
        if body[:2] != b"\x1f\x8b":
            return self.error(400, "context is not gzip")
        if q.get("dockerfile", [""])[0] == "fail.Dockerfile":
            msg = "The command '/bin/sh -c false' returned a non-zero code: 1"
            return self.lines([{"stream": "Step 1/2 : FROM base\n"},
                               {"errorDetail": {"code": 1, "message": msg}, "error": msg}])
        tags = q.get("t", [])
        return self.lines([
            {"stream": "Step 1/2 : FROM base\n"},
            {"stream": " ---> 0123456789ab\n"},
            {"status": "Pulling base", "id": "base"},
            {"aux": {"ID": BUILT_ID}},
            {"stream": "Successfully built efefefefefef\n"},
        ] + [{"stream": "Successfully tagged %s\n" % t} for t in tags])

    def image(self, method, rest, q):
        if method == "POST" and rest.endswith("/push"):
            name = rest[:-5]
            tag = q.get("tag", ["latest"])[0]
            if self.headers.get("X-Registry-Auth") is None:
                return self.error(400, "X-Registry-Auth is required")
            if "fail" in name:
                msg = "denied: requested access to the resource is denied"
                return self.lines([{"status": "The push refers to repository [%s]" % name},
                                   {"errorDetail": {"message": msg}, "error": msg}])
            return self.lines([
                {"status": "The push refers to repository [%s]" % name},
                {"status": "Pushed", "progressDetail": {}, "id": "0123"},
                {"status": "%s: digest: %s size: 528" % (tag, PUSH_DIGEST)},
                {"progressDetail": {}, "aux": {"Tag": tag, "Digest": PUSH_DIGEST, "Size": 528}},
            ])
        if method == "POST" and rest.endswith("/tag"):
            return self.send(201)
        if method == "DELETE":
            if rest == "unknown":
                return self.error(404, "No such image: " + rest)
            return self.send(200, [{"Untagged": rest}, {"Deleted": BUILT_ID}])
        if method == "GET" and rest.endswith("/json"):
            name = rest[:-5]
            if name == "unknown":
                return self.error(404, "No such image: " + name)
            return self.send(200, {"Id": BUILT_ID, "RepoTags": [name],
                                   "RepoDigests": [name.split(":")[0] + "@" + DIGEST]})
        return self.error(404, "page not found")

    # ---- networks ----

    def network(self, method, ref, q, body):
        with STATE.lock:
            if method == "GET" and ref == "":
                filters = json.loads(q["filters"][0]) if "filters" in q else {}
                out = []
                for n in STATE.networks.values():
                    if not all(want in n["Name"] for want in filters.get("name", [])):
                        continue
                    if not all(k in n["Labels"] and ("=" not in want or n["Labels"][k] == v)
                               for want in filters.get("label", [])
                               for k, _, v in [want.partition("=")]):
                        continue
                    out.append(n)
                return self.send(200, out)
            if method == "POST" and ref == "create":
                doc = json.loads(body)
                name = doc.get("Name", "")
                if not name:
                    return self.error(400, "network name is required")
                if any(n["Name"] == name for n in STATE.networks.values()):
                    return self.error(409, "network with name %s already exists" % name)
                nid = "%064x" % (0xfeed0000 + len(STATE.networks) + STATE.next_id)
                STATE.next_id += 1
                STATE.networks[nid] = {"Name": name, "Id": nid, "Driver": doc.get("Driver",
                                       "bridge"), "Labels": doc.get("Labels") or {},
                                       "Created": "2026-11-26T05:39:11.%09dZ" % STATE.next_id,
                                       "Containers": {}}
                return self.send(201, {"Id": nid, "Warning": ""})
            found = None
            for nid, n in STATE.networks.items():
                if ref in (nid, n["Name"]) or (len(ref) >= 12 and nid.startswith(ref)):
                    found = nid
                    break
            if found is None:
                return self.error(404, "network %s not found" % ref)
            if method == "GET":
                return self.send(200, STATE.networks[found])
            if method == "DELETE":
                if STATE.networks[found]["Containers"]:
                    return self.error(403, "error while removing network: network %s id %s "
                                      "has active endpoints" % (ref, found))
                del STATE.networks[found]
                return self.send(204)
        return self.error(404, "page not found")

    # ---- containers ----

    def create(self, name, body):
        doc = json.loads(body)
        with STATE.lock:
            if name and any(c["name"] == name for c in STATE.containers.values()):
                return self.error(409, "Conflict. The container name \"/%s\" is already in use" % name)
            cid = "%064x" % STATE.next_id
            STATE.next_id += 1
            STATE.containers[cid] = {"name": name or cid[:12], "config": doc,
                                     "running": False, "labels": doc.get("Labels") or {}}
        return self.send(201, {"Id": cid, "Warnings": []})

    def find(self, ref):
        for cid, c in STATE.containers.items():
            if cid == ref or c["name"] == ref or (len(ref) >= 12 and cid.startswith(ref)):
                return cid, c
        return None, None

    def container(self, method, ref, action, q):
        if ref.startswith("logs-") and action == "logs":
            return self.logs(ref, q)
        if ref == "boom":
            return self.error(500, "boom: the engine fell over")
        if ref == "huge" and action == "json":
            return self.send(200, {"Id": "huge", "Pad": "x" * (2 << 20)})
        with STATE.lock:
            cid, c = self.find(ref)
            if not c:
                return self.error(404, "No such container: " + ref)
            attrs = dict(c["labels"])
            if method == "POST" and action == "start":
                if c["running"]:
                    return self.send(304)
                c["running"] = True
                publish(make_event("start", cid, attrs))
                return self.send(204)
            if method == "POST" and action == "stop":
                if not c["running"]:
                    return self.send(304)
                c["running"] = False
                for a in ("kill", "die", "stop"):
                    publish(make_event(a, cid, attrs))
                return self.send(204)
            if method == "POST" and action == "kill":
                if not c["running"]:
                    return self.error(409, "Container %s is not running" % cid)
                c["running"] = False
                publish(make_event("die", cid, attrs))
                return self.send(204)
            if method == "DELETE" and action == "":
                if c["running"] and q.get("force", ["0"])[0] != "1":
                    return self.error(409, "You cannot remove a running container")
                del STATE.containers[cid]
                publish(make_event("destroy", cid, attrs))
                return self.send(204)
            if method == "GET" and action == "json":
                return self.send(200, {"Id": cid, "Name": "/" + c["name"],
                                       "State": {"Running": c["running"]},
                                       "Config": dict(c["config"], Tty=False,
                                                      Labels=c["labels"])})
            if method == "POST" and action == "wait":
                return self.send(200, {"StatusCode": 0, "Error": None})
            if method == "GET" and action == "stats":
                if q.get("one-shot") != ["true"] or q.get("stream") != ["false"]:
                    return self.error(400, "expected a one-shot request")
                return self.send(200, {"id": cid, "memory_stats": {"usage": 1234},
                                       "cpu_stats": {"online_cpus": 2}})
        return self.error(404, "page not found")

    def list_containers(self, q):
        filters = json.loads(q["filters"][0]) if "filters" in q else {}
        show_all = q.get("all", ["0"])[0] == "1"
        out = []
        with STATE.lock:
            for cid, c in STATE.containers.items():
                if not show_all and not c["running"]:
                    continue
                ok = True
                for want in filters.get("label", []):
                    k, _, v = want.partition("=")
                    if k not in c["labels"] or ("=" in want and c["labels"][k] != v):
                        ok = False
                if ok:
                    out.append({"Id": cid, "Names": ["/" + c["name"]], "Labels": c["labels"],
                                "State": "running" if c["running"] else "exited"})
        return self.send(200, out)

    def logs(self, ref, q):
        if ref.startswith("logs-many-"):
            self.start_chunked("application/vnd.docker.multiplexed-stream")
            total = int(ref[len("logs-many-"):])
            for first in range(1, total + 1, 100):
                last = min(total, first + 99)
                data = b"".join(frame(1, "2026-11-26T05:39:11.%09dZ line %d\n" % (i, i))
                                for i in range(first, last + 1))
                try:
                    self.chunk(data)
                except OSError:
                    self.close_connection = True
                    return None
                with STATE.lock:
                    STATE.logs_sent = last
            return self.end_chunked()
        if ref == "logs-tty":
            self.start_chunked("application/vnd.docker.raw-stream")
            self.chunk("2026-11-26T05:39:11.000000001Z tty line one\r\n2026-11-26T05:39")
            self.chunk(":11.000000002Z tty line two\r\n")
            return self.end_chunked()
        self.start_chunked("application/vnd.docker.multiplexed-stream")
        frames = [
            frame(1, "2026-11-26T05:39:11.000000001Z hello stdout\n"),
            frame(2, "2026-11-26T05:39:11.000000002Z hello stderr\n"),
            frame(1, "2026-11-26T05:39:11.000000003Z partial "),
            frame(1, "2026-11-26T05:39:11.000000004Z joined\n"),
        ]
        data = b"".join(frames)
        # A header split across two chunks, as any reader must expect.
        self.chunk(data[:3])
        self.chunk(data[3:])
        if ref == "logs-normal":
            return self.end_chunked()
        if ref == "logs-truncated":
            last = frame(2, "2026-11-26T05:39:11.000000005Z cut short\n")
            self.chunk(last[:42])
            return self.end_chunked()
        if ref == "logs-drop":
            return self.cut()
        if ref == "logs-hang":
            while True:  # until the client goes away
                time.sleep(0.05)
                try:
                    self.chunk(frame(1, "2026-11-26T05:39:12Z tick\n"))
                except OSError:
                    self.close_connection = True
                    return None
        return self.end_chunked()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that goes away mid-answer is part of the tests.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve():
    if os.path.exists(STATE.path):
        os.unlink(STATE.path)
    srv = Server(STATE.path, Handler)
    STATE.server = srv
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def restart(down_ms, profile):
    """The engine goes away (socket gone, every connection cut) and comes back."""
    time.sleep(0.05)
    srv = STATE.server
    srv.shutdown()
    srv.server_close()
    with STATE.lock:
        conns = list(STATE.conns)
        subs = STATE.subscribers
        STATE.subscribers = []
        STATE.events = []
        if profile:
            STATE.profile = PROFILES[profile]
    for s in subs:
        s.q.put(None)
    for c in conns:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    os.unlink(STATE.path)
    time.sleep(down_ms / 1000.0)
    serve()


def main():
    global STATE
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    profile = "old"
    if "--profile" in args:
        profile = args[args.index("--profile") + 1]
    STATE = State(args[0], PROFILES[profile])
    serve()
    print("ready", flush=True)
    # Exit when the test closes our stdin (or dies).
    try:
        sys.stdin.read()
    finally:
        if os.path.exists(STATE.path):
            os.unlink(STATE.path)
        # The test's scratch directory, when a failed test could not remove it.
        parent = os.path.dirname(STATE.path)
        if os.path.basename(parent).startswith("slipway-fake-docker-"):
            try:
                os.rmdir(parent)
            except OSError:
                pass


if __name__ == "__main__":
    main()
