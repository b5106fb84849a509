"""A small synchronous client for the CA's admin API on its Unix socket (used by the CLI).

Errors come back as the ``S2SError`` subclass named by the response's ``error`` code, so the CLI
maps them to exit codes without knowing HTTP. A CA that is not running raises ``Unavailable``.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from s2s.core.errors import NotAuthorized, Unavailable, error_from_code

__all__ = ["ADMIN_SOCKET_NAME", "AdminClient"]

ADMIN_SOCKET_NAME: Final = "admin.sock"
_MAX_RESPONSE: Final = 16 * 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Calls the admin API at ``socket_path``; one short connection per call."""

    def __init__(self, socket_path: Path, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def get(self, path: str, **query: str | list[str]) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, body=body or {})

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: Mapping[str, str | list[str]] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON (or text for non-JSON answers)."""
        status, content_type, data = self._send(method, path, body, query)
        if content_type.startswith("application/json"):
            try:
                decoded = json.loads(data)
            except ValueError as exc:
                raise Unavailable(f"the CA sent malformed JSON: {exc}") from exc
        else:
            decoded = data.decode("utf-8", "replace")
        if status >= 400:
            if isinstance(decoded, dict) and "error" in decoded:
                raise error_from_code(str(decoded["error"]), str(decoded.get("message", "")))
            raise Unavailable(f"the CA answered HTTP {status}")
        return decoded

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        query: Mapping[str, str | list[str]] | None,
    ) -> tuple[int, str, bytes]:
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixConnection(self.socket_path, self._timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read(_MAX_RESPONSE)
            return response.status, response.getheader("Content-Type", ""), data
        except FileNotFoundError as exc:
            raise Unavailable(
                f"no CA admin socket at {self.socket_path}; is `s2s-ca serve` running?"
            ) from exc
        except ConnectionRefusedError as exc:
            raise Unavailable(f"the CA at {self.socket_path} refused the connection") from exc
        except PermissionError as exc:
            raise NotAuthorized(
                f"no permission to open {self.socket_path}; run as the CA's user"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"cannot talk to the CA at {self.socket_path}: {exc}") from exc
        finally:
            conn.close()
