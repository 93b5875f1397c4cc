#!/usr/bin/env python3
"""A TLS front for the fakes: terminates TLS and forwards the plain bytes.

    tls_front.py --cert CERT --key KEY --to PORT

Binds 127.0.0.1 port 0 and prints the port on the first stdout line. Each
connection is handshaken with CERT/KEY (PEM) and piped to 127.0.0.1:PORT, so
any plain-HTTP fake (coordinator.py, cloudwatch.py) can be reached over HTTPS
with a test CA: how the tests check the agent's TLS set-up and CA options.
Handshakes the client refuses are counted and reported on stderr. Standard
library only.
"""
import argparse
import socket
import ssl
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn, ctx, port):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError) as e:
        print(f"tls_front: handshake failed: {e}", file=sys.stderr, flush=True)
        conn.close()
        return
    try:
        up = socket.create_connection(("127.0.0.1", port))
    except OSError as e:
        print(f"tls_front: upstream: {e}", file=sys.stderr, flush=True)
        tls.close()
        return
    t = threading.Thread(target=pipe, args=(up, tls), daemon=True)
    t.start()
    pipe(tls, up)
    t.join()
    tls.close()
    up.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--to", type=int, required=True)
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    print(lsock.getsockname()[1], flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn, ctx, a.to), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
