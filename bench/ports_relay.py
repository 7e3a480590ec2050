"""A bare TCP relay for the ports benchmark's floor: 127.0.0.1:LISTEN -> 127.0.0.1:TARGET, nothing else.

It moves the bytes with the project's own kernel relay (dstack.agent.tunnel.relay: splice, no copy into
user space), without a handshake, an authentication, a WebSocket or an event loop. Two of them in a row
are the least any path with two relays on one machine can cost (the server path: CLI -> server -> app).

    python bench/ports_relay.py LISTEN TARGET     (prints "ready" once it listens; runs until killed)
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dstack.agent.tunnel import relay


def main() -> None:
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    server = socket.create_server(("127.0.0.1", listen))
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=relay, args=(client, upstream), daemon=True).start()


if __name__ == "__main__":
    main()
