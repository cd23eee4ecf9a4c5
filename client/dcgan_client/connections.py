"""Keep-alive HTTP/1.1 connections to one server (standard library http.client), and the Retry-After header.

urllib opens a new connection (and, for https, a new TLS handshake) for every request; at the service's
millisecond latencies that is a good part of a small request's cost. Here a Client keeps its idle connections
and reuses them, from any thread: a call takes an idle one or opens one, and gives it back once the answer is
read, unless the server said `Connection: close`. A server may close an idle connection at any time (BentoML's
keep-alive timeout, a pod that restarted); a request that fails on a reused connection before any answer is
sent once more on a new one, which is safe for the client's requests (all GETs).
"""

from __future__ import annotations

import email.utils
import http.client
import threading
import urllib.parse
from datetime import UTC, datetime

MAX_IDLE = 16  # idle connections kept per client; more are opened while more threads call at once
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is waited out only this long before the next try
STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError, ConnectionResetError)


def retry_after_s(value: str | None, default: float = 1.0, now: datetime | None = None) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds ("3") or an HTTP-date ("Sun, 06 Dec 2026 18:30:00 GMT"),
    as RFC 9110 section 10.2.3 allows both; `default` when absent or unreadable; never negative, at most 60 s."""
    if value is None or not value.strip():
        return default
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    wait = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


class Connections:
    """A pool of keep-alive connections to the origin of `url` (http or https), safe to share between threads."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a URL such as http://127.0.0.1:3000, got {url!r}")
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")  # a service mounted under a path behind a proxy
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.opened = 0  # connections opened so far

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, reused)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
            self.opened += 1
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def get(self, path_and_query: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). Raises OSError or http.client.HTTPException when no answer came."""
        while True:
            conn, reused = self._take()
            try:
                conn.request("GET", self.prefix + path_and_query, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except STALE:
                conn.close()
                if reused:
                    continue  # the server had closed this idle connection: the next try opens a new one
                raise
            except BaseException:
                conn.close()
                raise
            answer = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return response.status, answer, body

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
