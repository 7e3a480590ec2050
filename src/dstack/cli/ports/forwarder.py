"""Forwarding a run's ports while the CLI is attached: wait until each answers, print its URL once, then
accept local connections and carry each one to the task (through the server, or straight on this machine).

Everything runs in daemon threads beside the output stream: one waiter per port, one acceptor per local
listener, two threads per connection (one per direction), so a slow or broken connection never holds up
another one or the output.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from dstack.api.client import Client
from dstack.api.errors import APIError, ServerUnreachable
from dstack.cli.output import note
from dstack.cli.ports import wsclient
from dstack.cli.ports.reserve import FORCE_SERVER_ENV, Forward
from dstack.core.statuses import RunStatus

WAIT_SECONDS = 25.0  # one long poll; the wait as a whole has no limit (installs can take minutes)
RETRY_SECONDS = 1.0
CONNECT_TIMEOUT = 10.0
ERROR_REPEAT_SECONDS = 30.0
CHUNK = 256 * 1024
EOF_MESSAGE = "eof"
CLOSE_NORMAL = 1000
CLOSE_CLIENT_BROKEN = 4000


class Forwarder:
    def __init__(
        self, client: Client, run_name: str, forwards: list[Forward], announce: Callable[[str], None] = note
    ) -> None:
        self.client = client
        self.run_name = run_name
        self.forwards = forwards
        self._announce = announce
        self._stopped = threading.Event()
        self._last_error: tuple[str, float] | None = None

    def start(self) -> None:
        if any(f.listener is not None and not f.direct for f in self.forwards):
            threading.Thread(target=wsclient.preload, name="ws-preload", daemon=True).start()
        for forward in self.forwards:
            threading.Thread(
                target=self._wait_then_serve,
                args=(forward,),
                name=f"port-{forward.container_port}",
                daemon=True,
            ).start()

    def stop(self) -> None:
        self._stopped.set()
        for forward in self.forwards:
            forward.release()

    # -- waiting for the app -----------------------------------------------------------------------------

    def _wait_then_serve(self, forward: Forward) -> None:
        if not self._wait_until_open(forward):
            return
        if forward.listener is not None:
            try:
                forward.listener.listen(128)
            except OSError:
                return  # released meanwhile: the run ended or the CLI is exiting
        self._announce(f"Port {forward.container_port} is up at {forward.url}")
        if forward.listener is not None:
            self._accept(forward)

    def _wait_until_open(self, forward: Forward) -> bool:
        port = forward.container_port
        # Its own client: the main thread's connection is busy with the output stream and stop requests.
        api = Client(self.client.url, self.client.token, self.client.project, timeout=WAIT_SECONDS + 30)
        path = f"/api/project/{quote(self.client.project, safe='')}/runs/{quote(self.run_name, safe='')}"
        try:
            while not self._stopped.is_set():
                try:
                    answer = api.json("GET", f"{path}/ports/{port}", params={"wait": WAIT_SECONDS})
                except ServerUnreachable:
                    # The server restarts or the link is down; the output stream says so and gives up in
                    # time; here, try again.
                    self._stopped.wait(RETRY_SECONDS)
                    continue
                except APIError as e:
                    if e.status is not None and e.status >= 500:  # the task's host does not answer yet
                        self._stopped.wait(RETRY_SECONDS)
                        continue
                    self._announce(f"Port {port} is not forwarded: {e.message}")
                    return False
                if answer["open"]:
                    if not forward.direct and os.environ.get(FORCE_SERVER_ENV) != "1":
                        forward.socket_path = answer.get("socket")
                    return not self._stopped.is_set()
                if RunStatus(answer["status"]).is_finished:
                    return False
            return False
        finally:
            api.close()

    # -- local connections -------------------------------------------------------------------------------

    def _accept(self, forward: Forward) -> None:
        listener = forward.listener
        assert listener is not None
        while not self._stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was released
            threading.Thread(target=self._serve, args=(forward, conn), name="port-conn", daemon=True).start()

    def _serve(self, forward: Forward, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if forward.direct:
                self._serve_direct(forward, conn)
            elif forward.socket_path is not None and self._serve_socket(forward, conn):
                pass
            else:
                self._serve_tunnel(forward, conn)
        except Exception as e:  # a broken connection must never take the CLI down
            self._report(forward, f"a connection failed: {e}")
            reset(conn)

    def _serve_direct(self, forward: Forward, conn: socket.socket) -> None:
        from dstack.agent.tunnel import connect_port, relay  # stdlib-only, shared with the agent

        try:
            target = connect_port(forward.container_port, CONNECT_TIMEOUT)
        except OSError as e:
            self._report(forward, f"nothing answers on port {forward.container_port} ({e.strerror or e})")
            reset(conn)
            return
        relay(conn, target)

    def _serve_socket(self, forward: Forward, conn: socket.socket) -> bool:
        """Relay to the unix socket the server named; False (nothing sent yet) if it cannot be used here."""
        from dstack.agent.tunnel import relay

        target = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            target.settimeout(CONNECT_TIMEOUT)
            target.connect(str(forward.socket_path))
            target.settimeout(None)
        except OSError:
            target.close()
            forward.socket_path = None  # not ours to use (another user, another machine): the server relays
            return False
        relay(conn, target)
        return True

    def _serve_tunnel(self, forward: Forward, conn: socket.socket) -> None:
        path = (
            f"/api/project/{quote(self.client.project, safe='')}/runs/{quote(self.run_name, safe='')}"
            f"/ports/{forward.container_port}/connect"
        )
        try:
            ws = wsclient.connect(self.client.url, path, self.client.token, timeout=CONNECT_TIMEOUT, raw=True)
        except (OSError, wsclient.WebSocketError) as e:
            if isinstance(e, wsclient.WebSocketError):
                message = e.message
            else:
                message = f"cannot reach the dstack server at {self.client.url} ({e.strerror or e})"
            self._report(forward, message)
            reset(conn)
            return
        if ws.raw:
            # The server relays the bytes as they are: so does this end, in the kernel where it can.
            from dstack.agent.tunnel import relay  # stdlib-only, shared with the agent

            early = ws.leftover()
            try:
                if early:
                    conn.sendall(early)
            except OSError:
                reset(conn)
                reset(ws.sock)
                return
            relay(conn, ws.sock)
            return
        relay_websocket(conn, ws)

    def _report(self, forward: Forward, message: str) -> None:
        """Say why a connection failed, without repeating the same sentence for every browser retry."""
        if self._stopped.is_set():
            return
        now = time.monotonic()
        last = self._last_error
        if last is not None and last[0] == message and now - last[1] < ERROR_REPEAT_SECONDS:
            return
        self._last_error = (message, now)
        note(f"Port {forward.container_port} ({forward.url}): {message}", dim=True)


def relay_websocket(local: socket.socket, ws: wsclient.WebSocket) -> None:
    """Carry one local connection over its WebSocket until both sides end, or one breaks; close both."""
    upstream = threading.Thread(target=_local_to_server, args=(local, ws), name="port-up", daemon=True)
    upstream.start()
    broken = True

    def on_data(view: memoryview) -> None:
        try:
            local.sendall(view)
        except OSError as e:
            raise wsclient.SinkBroken() from e

    def on_text(text: str) -> None:
        if text == EOF_MESSAGE:
            try:
                local.shutdown(socket.SHUT_WR)
            except OSError as e:
                raise wsclient.SinkBroken() from e

    try:
        code, _ = ws.pump_to(on_data, on_text, splice_to=local)
        broken = code != CLOSE_NORMAL
    except wsclient.SinkBroken:
        # The local client went away: tell the server, so that the task's side is reset too.
        try:
            ws.send_close(CLOSE_CLIENT_BROKEN)
        except (OSError, wsclient.WebSocketError):
            pass
    except wsclient.WebSocketError:
        pass  # the link broke: the local connection is reset below, as a direct one would be
    finally:
        try:
            local.shutdown(socket.SHUT_RDWR)  # wakes the upstream thread if it still waits
        except OSError:
            pass
        upstream.join()
        ws.close()
        if broken:
            reset(local)
        else:
            local.close()


def _local_to_server(local: socket.socket, ws: wsclient.WebSocket) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        try:
            count = local.recv_into(view)
        except OSError:
            count = -1
        try:
            if count > 0:
                ws.send_binary(view[:count])
                continue
            if count == 0:
                ws.send_text(EOF_MESSAGE)
            else:
                ws.send_close(CLOSE_CLIENT_BROKEN)
        except wsclient.WebSocketError:
            pass  # already closing
        except OSError:
            # The link to the server broke: make the reading side notice now.
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return


def reset(sock: socket.socket) -> None:
    """Close with a reset, so the local client sees the connection broke rather than a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
