#!/usr/bin/env bash
# The integration harness itself: the registry, the test image pulled from it,
# testsrv's endpoints and SIGTERM drain in a container, and testsrv's WebSocket
# echo on the host. Needs the environment of `harness.sh up` (tests/run sources it).
set -u
top=${SLIPWAY_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
# shellcheck source=../lib/tap.sh
. "$top/tests/lib/tap.sh"
: "${SLIPWAY_TEST_REGISTRY:?run through tests/run (harness.sh up sets the environment)}"

tap_plan 21
cid=""
host_pid=""
tmp=$(mktemp -d)
cleanup() {
	[ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1
	[ -z "$host_pid" ] || kill "$host_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds.
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

reg=http://$SLIPWAY_TEST_REGISTRY
code=$(curl -s -o /dev/null -w '%{http_code}' "$reg/v2/")
tap_check "registry answers /v2/ with 200" [ "$code" = 200 ]
catalog=$(curl -s "$reg/v2/_catalog")
case $catalog in
*'"slipway-test/testsrv"'*) tap_ok "catalog lists slipway-test/testsrv" ;;
*) tap_fail "catalog lists slipway-test/testsrv" "$catalog" ;;
esac

# --- the image, pulled from the registry, in a container ---
if cid=$(docker run -d --label "$SLIPWAY_TEST_LABEL" -e RELEASE=x "$SLIPWAY_TEST_IMAGE" 2>"$tmp/run.err"); then
	tap_ok "docker run $SLIPWAY_TEST_IMAGE"
else
	tap_fail "docker run $SLIPWAY_TEST_IMAGE" "$(cat "$tmp/run.err")"
	cid=""
fi
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid" 2>/dev/null)
url=http://$ip:8080
logs_have() { docker logs "$cid" 2>&1 | grep -q -- "$1"; }
wait_for 15 logs_have "testsrv release=x listening port=8080" ||
	echo "# container never printed its start-up line; logs: $(docker logs "$cid" 2>&1 | tail -5)"

resp=$(curl -s -D "$tmp/headers" "$url/")
tap_check "GET / says hello from x" [ "$resp" = "hello from x" ]
release=$(sed -nE 's/^X-Release: ([^\r]*)\r$/\1/Ip' "$tmp/headers")
tap_check "GET / carries X-Release: x" [ "$release" = x ]
resp=$(curl -s -w ' %{http_code}' "$url/health")
tap_check "/health is 200 ok" [ "$resp" = "ok 200" ]

read -r code secs < <(curl -s -o "$tmp/slow.body" -w '%{http_code} %{time_total}\n' "$url/slow?ms=200")
# testsrv counts whole milliseconds, so its 200 ms may be 199.x of real time.
if [ "$code $(cat "$tmp/slow.body")" = "200 slow ms=200" ] && awk -v s="$secs" 'BEGIN { exit !(s >= 0.199) }'; then
	tap_ok "/slow?ms=200 answers after 200 ms"
else
	tap_fail "/slow?ms=200 answers after 200 ms" "status $code after $secs s: $(cat "$tmp/slow.body")"
fi

printf 'first line\nsecond line\n' >"$tmp/body"
resp=$(curl -s -H 'Transfer-Encoding: chunked' --data-binary @"$tmp/body" "$url/echo")
tap_check "POST /echo echoes a chunked body" [ "$resp" = "$(cat "$tmp/body")" ]

curl -s "$url/log?n=5&size=64" >/dev/null
curl -s "$url/log?n=3&size=64&stream=stderr" >/dev/null
n=$(docker logs "$cid" 2>/dev/null | grep -c 'testsrv log seq=[1-5] release=x stream=stdout')
tap_check "/log lines reach docker logs (stdout): 5 lines" [ "$n" = 5 ]
n=$(docker logs "$cid" 2>&1 >/dev/null | grep -c 'testsrv log seq=[6-8] release=x stream=stderr')
tap_check "/log lines reach docker logs (stderr): 3 lines" [ "$n" = 3 ]

# --- SIGTERM drain: a slow request in flight completes, then exit 0 ---
# The client sends its headers with "Expect: 100-continue" and a one-byte body;
# the "100 Continue" proves the server holds the request before docker stop.
python3 - "$ip" >"$tmp/slow.out" 2>&1 <<'EOF' &
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=20)
s.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
got = b""
while b"\r\n\r\n" not in got:
    got += s.recv(1)
print("in-flight" if got.startswith(b"HTTP/1.1 100") else "unexpected %r" % got, flush=True)
s.sendall(b"x")
resp = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    resp += d
print(resp.decode(errors="replace"))
EOF
client=$!
wait_for 10 grep -q in-flight "$tmp/slow.out" || echo "# the slow request never got its 100 Continue"
t0=$(date +%s%N)
docker stop -t 10 "$cid" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
wait "$client"
if grep -q '^HTTP/1.1 200' "$tmp/slow.out" && grep -q '^slow ms=1500' "$tmp/slow.out" &&
	grep -qi '^Connection: close' "$tmp/slow.out"; then
	tap_ok "SIGTERM: the in-flight slow request completes (stop took ${stop_ms} ms)"
else
	tap_fail "SIGTERM: the in-flight slow request completes" "$(cat "$tmp/slow.out")"
fi
state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$cid" 2>&1)
tap_check "SIGTERM: container exits 0" [ "$state" = "exited 0" ]

docker rm -f "$cid" >/dev/null 2>&1
left=$(docker ps -aq --filter "id=$cid")
tap_check "container removed" [ -n "$cid" -a -z "$left" ]
cid=""

# --- the host binary: static, and its WebSocket echo ---
if readelf -l "$SLIPWAY_TEST_TESTSRV" 2>&1 | grep -q 'Requesting program interpreter'; then
	tap_fail "testsrv is a static binary" "$(readelf -l "$SLIPWAY_TEST_TESTSRV" | grep interpreter)"
else
	tap_check "testsrv is a static binary" test -x "$SLIPWAY_TEST_TESTSRV"
fi
# PORT=0: the kernel picks a free port; the start-up line names it.
PORT=0 RELEASE=ws "$SLIPWAY_TEST_TESTSRV" >"$tmp/host.out" 2>&1 &
host_pid=$!
wait_for 10 grep -q 'listening port=' "$tmp/host.out"
port=$(sed -nE 's/^testsrv release=ws listening port=([0-9]+)$/\1/p' "$tmp/host.out")
tap_check "host testsrv prints its start-up line" grep -q "^testsrv release=ws listening port=$port\$" "$tmp/host.out"

# A standard-library WebSocket client (RFC 6455); prints "PASS name" / "FAIL name: detail".
python3 - "${port:-1}" >"$tmp/ws.out" 2>&1 <<'EOF'
import base64, hashlib, os, socket, struct, sys

def frame(op, payload, fin=True):  # client frames are masked (RFC 6455 5.3)
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError(f"connection closed after {len(b)} of {n} bytes")
        b += d
    return b

def read_frame(s):
    b0, b1 = recv_exact(s, 2)
    if b1 & 0x80:
        raise ValueError("server frame is masked")
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(s, 8))[0]
    return b0, recv_exact(s, n)

def report(name, cond, detail=""):
    print(("PASS " if cond else "FAIL ") + name + ("" if cond else f": {detail}"), flush=True)

try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv_exact(s, 1)
    guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
    report("ws handshake: 101 with the right Sec-WebSocket-Accept",
           head.startswith(b"HTTP/1.1 101") and f"Sec-WebSocket-Accept: {accept}\r\n".encode() in head,
           head.decode(errors="replace"))
    s.sendall(frame(1, b"hello websocket"))
    got = read_frame(s)
    report("ws text frame echoed", got == (0x81, b"hello websocket"), got)
    data = os.urandom(70000)  # 64-bit length form
    s.sendall(frame(2, data))
    got = read_frame(s)
    report("ws 70000-byte binary frame echoed", got == (0x82, data), (got[0], len(got[1])))
    s.sendall(frame(9, b"are you there"))
    got = read_frame(s)
    report("ws ping answered with pong", got == (0x8A, b"are you there"), got)
    s.sendall(frame(8, struct.pack("!H", 1000)))
    got = read_frame(s)
    report("ws close answered with close 1000", got == (0x88, struct.pack("!H", 1000)), got)
except Exception as e:  # every missing result counts as a failure in tests/run
    print(f"FAIL ws client: {e!r}", flush=True)
EOF
while read -r verdict rest; do
	case $verdict in
	PASS) tap_ok "$rest" ;;
	FAIL) tap_fail "${rest%%: *}" "${rest#*: }" ;;
	*) echo "# $verdict $rest" ;;
	esac
done <"$tmp/ws.out"

kill -TERM "$host_pid" 2>/dev/null
wait "$host_pid"
rc=$?
host_pid=""
tap_check "host testsrv exits 0 on SIGTERM" [ "$rc" = 0 ]
tap_done
