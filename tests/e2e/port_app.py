"""The web app the port tests run as a task: HTTP, a WebSocket echo and a plain TCP echo, on given ports.

HTTP: GET /hello, GET /big?size=N&seed=S (a deterministic, non-repeating stream), GET /slow?delay=S,
POST /sha256 (the body's digest), GET /quit (ends the task with 0). TCP: echoes bytes; after the line
"close" it closes that one connection. It prints "tick N" lines with --ticks, and waits --delay s before
it listens (an app that takes a while to start).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BLOCK = 1024 * 1024


def stream_block(seed: int, index: int, size: int) -> bytes:
    return random.Random(seed * 1_000_003 + index).randbytes(size)


def stream_sha256(seed: int, size: int) -> str:
    digest = hashlib.sha256()
    for index, offset in enumerate(range(0, size, BLOCK)):
        digest.update(stream_block(seed, index, min(BLOCK, size - offset)))
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, as real servers do

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/hello":
            self._send(b"hello from the task\n")
        elif url.path == "/slow":
            time.sleep(float(query.get("delay", "0.5")))
            self._send(f"slow {query.get('id', '')}\n".encode())
        elif url.path == "/big":
            size, seed = int(query["size"]), int(query.get("seed", "1"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for index, offset in enumerate(range(0, size, BLOCK)):
                self.wfile.write(stream_block(seed, index, min(BLOCK, size - offset)))
        elif url.path == "/quit":
            self._send(b"bye\n")
            threading.Timer(0.2, lambda: os._exit(0)).start()
        else:
            self._send(b"not found\n", 404)

    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        digest = hashlib.sha256()
        while remaining:
            chunk = self.rfile.read(min(remaining, BLOCK))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
        self._send(digest.hexdigest().encode())

    def _send(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class TcpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pending = b""
        while data := self.request.recv(65536):
            pending = (pending + data)[-16:]
            if b"close\n" in pending:
                self.request.close()  # this connection only
                return
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


class ThreadingTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_ws(port: int) -> None:
    from websockets.sync.server import serve

    def echo(connection) -> None:  # type: ignore[no-untyped-def]
        for message in connection:
            connection.send(message)

    with serve(echo, "127.0.0.1", port, compression=None, max_size=None) as server:
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int)
    parser.add_argument("--ws", type=int)
    parser.add_argument("--tcp", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ticks", action="store_true")
    args = parser.parse_args()
    time.sleep(args.delay)
    if args.ws:
        threading.Thread(target=serve_ws, args=(args.ws,), daemon=True).start()
    if args.tcp:
        tcp = ThreadingTcp(("127.0.0.1", args.tcp), TcpEcho)
        threading.Thread(target=tcp.serve_forever, daemon=True).start()
    http = ThreadingHTTPServer(("127.0.0.1", args.http), Handler)
    http.daemon_threads = True
    print("listening", flush=True)
    if args.ticks:

        def tick() -> None:
            for n in range(1_000_000):
                print(f"tick {n}", flush=True)
                time.sleep(0.05)

        threading.Thread(target=tick, daemon=True).start()
    http.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
