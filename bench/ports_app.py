"""The task the ports benchmark runs: a bulk TCP source and a tiny keep-alive HTTP server.

Source port: a client sends an 8-byte big-endian size, the app sends that many bytes back as fast as it can.
HTTP port: GET /hello answers 6 bytes; GET /file sends a FILE_MB file as http.server does (64 KiB copies);
GET /quit ends the task. Right after both ports listen it prints
`listening-at <unix time>`, so the benchmark can time how soon the CLI announces the URL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"\xa5" * (4 * 1024 * 1024)
FILE = "bench-file.bin"
FILE_MB = 256


def serve_source(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_send, args=(conn,), daemon=True).start()


def _send(conn: socket.socket) -> None:
    with conn:
        (size,) = struct.unpack(">Q", conn.recv(8, socket.MSG_WAITALL))
        view = memoryview(CHUNK)
        while size > 0:
            sent = conn.send(view[: min(size, len(CHUNK))])
            size -= sent


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, as real servers do

    def do_GET(self) -> None:
        if self.path == "/file":
            with open(FILE, "rb") as f:
                self.send_response(200)
                self.send_header("Content-Length", str(FILE_MB * 1024 * 1024))
                self.end_headers()
                shutil.copyfileobj(f, self.wfile)
            return
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/quit":
            threading.Timer(0.2, lambda: os._exit(0)).start()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=int, required=True)
    parser.add_argument("--http", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with open(FILE, "wb") as f:
        f.truncate(FILE_MB * 1024 * 1024)  # sparse: reading it costs no disk
    time.sleep(args.delay)
    source = socket.create_server(("127.0.0.1", args.source))
    http = ThreadingHTTPServer(("127.0.0.1", args.http), Hello)
    http.daemon_threads = True
    print(f"listening-at {time.time():.6f}", flush=True)
    threading.Thread(target=serve_source, args=(source,), daemon=True).start()
    http.serve_forever()


if __name__ == "__main__":
    main()
