"""A TCP relay between a gateway and S3 that can stall uploads: while stalled, the last byte a client has
sent is held back, so S3 never has a whole request and a PUT stays under way for as long as the test
wants. Threads in the test process; `close` ends them and every connection."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingRelay:
    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((address, 0))
        self.address = f"{address}:{self.listener.getsockname()[1]}"
        self.stalled = threading.Event()
        self.put_held = threading.Event()  # a PUT's last byte is being held back
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target, timeout=10)
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        held = b""
        put = False
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                data, held = held + data, b""
                put = put or b"PUT /" in data
                if self.stalled.is_set():
                    data, held = data[:-1], data[-1:]
                    if put:
                        self.put_held.set()
                else:
                    put = False
                server.sendall(data)
        # The client is gone (or the relay closed): what was held back never reaches S3.
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.drop_connections()
