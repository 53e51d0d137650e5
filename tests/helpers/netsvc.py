#!/usr/bin/env python3
"""Tiny network peers for svcnat's traffic tests and demo.

  netsvc.py http ADDR PORT NAME     HTTP server answering every GET with "NAME\n"
  netsvc.py echo ADDR PORT          TCP server echoing what it receives
  netsvc.py get URL                 one GET, prints the body (exit 1 on failure)
  netsvc.py gets HOST PORT N        N GETs on N new connections; prints "BODY COUNT" lines
  netsvc.py echoed HOST PORT BYTES  sends BYTES random bytes, exits 0 if they come back
  netsvc.py stream HOST PORT SECS   one connection echoing for SECS seconds; prints "ready"
                                    once data flows, exits 0 if every byte came back intact
  netsvc.py peer ADDR PORT          HTTP server answering every GET with the client's address
  netsvc.py udpname ADDR PORT NAME  UDP server answering every datagram with "NAME"
  netsvc.py udpping HOST PORT SECS  one UDP socket (one conntrack entry) sending every 100 ms
                                    for SECS seconds; prints "UNIXTIME NAME" per answer

The servers bind and listen before anything else, and never do reverse DNS (the stall of
python's http.server in a namespace without DNS).
"""
import os
import socket
import sys
import threading
from collections import Counter


def serve(addr, port, handle):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(512)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def http_handler(name):
    body = (name + "\n").encode()

    def handle(c):
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n%s" % (len(body), body))
    return handle


def peer_handler(c):
    """Answer with the address the connection came from (what masquerade changes)."""
    http_handler(c.getpeername()[0])(c)


def echo(c):
    with c:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return
            c.sendall(chunk)


def get(host, port, timeout=3.0):
    with socket.create_connection((host, int(port)), timeout) as c:
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError("bad response: %r" % head[:40])
    return body.decode().strip()


def main():
    cmd = sys.argv[1]
    if cmd == "http":
        serve(sys.argv[2], sys.argv[3], http_handler(sys.argv[4]))
    elif cmd == "echo":
        serve(sys.argv[2], sys.argv[3], echo)
    elif cmd == "peer":
        serve(sys.argv[2], sys.argv[3], peer_handler)
    elif cmd == "get":
        url = sys.argv[2].removeprefix("http://").rstrip("/")
        host, _, port = url.rpartition(":")
        try:
            print(get(host.strip("[]"), port))
        except OSError as e:
            print("error:", e, file=sys.stderr)
            sys.exit(1)
    elif cmd == "gets":
        host, port, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        counts = Counter()
        for _ in range(n):
            try:
                counts[get(host, port)] += 1
            except OSError as e:
                counts["error:" + type(e).__name__] += 1
        for body, count in sorted(counts.items()):
            print(body, count)
    elif cmd == "echoed":
        host, port, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        payload = os.urandom(size)
        with socket.create_connection((host, port), 3) as c:
            c.settimeout(5)
            got = bytearray()
            threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
            while len(got) < size:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        if bytes(got) != payload:
            print("echo mismatch: sent %d bytes, got %d back" % (size, len(got)), file=sys.stderr)
            sys.exit(1)
        print("echoed", size)
    elif cmd == "stream":
        host, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        import time
        sent = received = 0
        with socket.create_connection((host, port), 3) as c:
            c.settimeout(2)
            end = time.monotonic() + secs
            i = 0
            while time.monotonic() < end:
                chunk = (b"%08d" % i) * 512  # 4 KiB, numbered: a gap or a replay shows up
                c.sendall(chunk)
                got = b""
                while len(got) < len(chunk):
                    part = c.recv(len(chunk) - len(got))
                    if not part:
                        sys.exit("stream closed after %d bytes" % received)
                    got += part
                if got != chunk:
                    sys.exit("stream corrupted at chunk %d" % i)
                sent += len(chunk)
                received += len(got)
                if i == 0:
                    print("ready", flush=True)
                i += 1
                time.sleep(0.01)
        print("streamed", received, flush=True)
    elif cmd == "udpname":
        addr, port, name = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(name, peer)
    elif cmd == "udppeer":
        # Answer each datagram with this server's name and the address it came from.
        addr, port, name = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(("%s %s" % (name, peer[0])).encode(), peer)
    elif cmd == "udpgets":
        # n datagrams, each from a socket of its own (so a connection of its own), and a
        # count of the answers.
        host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        counts = Counter()
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1.0)
            try:
                s.sendto(b"ping", (host, port))
                counts[s.recvfrom(2048)[0].decode()] += 1
            except OSError as e:
                counts["error:" + type(e).__name__] += 1
            finally:
                s.close()
        for body, count in sorted(counts.items()):
            print(body, count)
    elif cmd == "udpping":
        import time
        host, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.1)
        end = time.monotonic() + secs
        while time.monotonic() < end:
            s.sendto(b"ping", (host, port))
            sent = time.monotonic()
            try:
                name, _ = s.recvfrom(2048)
                print("%.3f %s" % (time.time(), name.decode()), flush=True)
            except (socket.timeout, ConnectionRefusedError):
                pass
            time.sleep(max(0.0, 0.1 - (time.monotonic() - sent)))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
