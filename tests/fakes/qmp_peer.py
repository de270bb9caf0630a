"""A QMP peer on a Unix socket, speaking the protocol as QEMU does, answering as a test says.

For the replies and faults a real QEMU cannot be made to give (each user says which): the
greeting, then one JSON object per line, ended by CRLF, each reply carrying its request's
id. The commands it was sent are kept, per connection, in order.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any


class QmpPeer:
    """Serves every connection on `path` until closed; a subclass says what to answer."""

    capabilities: tuple[str, ...] = ()  # what the greeting offers

    def __init__(self, path: str) -> None:
        self.commands: list[list[str]] = []  # per connection, the commands in order
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(2)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        seen: list[str] = []
        self.commands.append(seen)
        greeting = {"QMP": {"version": {}, "capabilities": list(self.capabilities)}}
        conn.sendall(json.dumps(greeting).encode() + b"\r\n")
        for line in conn.makefile("rb"):
            message = json.loads(line)
            seen.append(self.name(message))
            reply = self.reply(message)
            reply["id"] = message.get("id")
            conn.sendall(json.dumps(reply).encode() + b"\r\n")

    def name(self, message: dict[str, Any]) -> str:
        """The command as `commands` keeps it: its name."""
        return str(message["execute"])

    def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply but its id: a success carrying :meth:`answer`."""
        return {"return": self.answer(message)}

    def answer(self, message: dict[str, Any]) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()
