#!/usr/bin/env python3
"""Send exactly TOTAL keep-alive GET requests over CONNS connections and exit (wrk only stops
on time). Used by bench.py to count a proxy's instructions for a known amount of work.

    fixed_client.py HOST PORT CONNS TOTAL    -> prints "<requests> <seconds>"
"""
import socket
import sys
import threading
import time

REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: meshpass-bench\r\n\r\n"


def worker(host, port, n, done, errors):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(n):
        s.sendall(REQ)
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                errors.append("closed")
                return
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n")[0].decode())
        while len(buf) < length:
            chunk = s.recv(65536)
            if not chunk:
                errors.append("closed mid-body")
                return
            buf += chunk
        buf = buf[length:]
        done.append(1)
    s.close()


def main():
    host, port, conns, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    done, errors = [], []
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(host, port, total // conns + (i < total % conns), done, errors))
          for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(len(done), round(time.monotonic() - t0, 3), len(errors))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
