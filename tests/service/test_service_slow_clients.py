"""Slow clients cannot starve others: a request holds an admission slot only once its whole body is in.

A server of its own with 4 admission slots and a 1 s body deadline. Dozens of raw connections
that send headers and then trickle (or never finish) their body, or never finish their headers,
must leave normal requests served, and the stalled bodies must get 408.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import refused

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

SLOTS = {"DCGAN_MAX_INFLIGHT": "4", "DCGAN_BODY_TIMEOUT_S": "1"}
SLOW_CONNECTIONS = 40


@pytest.fixture(scope="module")
def server(start_service):
    with start_service(SLOTS) as server:
        yield server


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _slow_body(url: str) -> socket.socket:
    """Headers of a valid POST, then 2 of its 20 body bytes."""
    sock = _connect(url)
    sock.sendall(b'POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"')
    return sock


def _slow_headers(url: str) -> socket.socket:
    sock = _connect(url)
    sock.sendall(b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Ty")
    return sock


def test_stalled_bodies_get_408_and_hold_no_admission_slot(server):
    slow = [_slow_body(server.url) for _ in range(SLOW_CONNECTIONS)]
    try:
        time.sleep(0.2)
        # 40 stalled requests > 4 slots: if they held slots, these would get 429
        with httpx.Client(timeout=30) as client:
            statuses = [client.post(f"{server.url}/sample", json={"seed": seed}).status_code for seed in range(8)]
        assert statuses == [200] * 8, statuses
        answers = []
        for sock in slow:
            sock.settimeout(10)
            answers.append(sock.recv(200).split(b"\r\n", 1)[0])
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}, collections.Counter(answers)
        assert refused(server.url, "body_timeout") >= SLOW_CONNECTIONS
    finally:
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.close()


def test_unfinished_headers_leave_normal_requests_served(server):
    slow = [_slow_headers(server.url) for _ in range(SLOW_CONNECTIONS)]
    try:
        with httpx.Client(timeout=30) as client:
            statuses = [client.post(f"{server.url}/sample", json={"seed": seed}).status_code for seed in range(8)]
        assert statuses == [200] * 8, statuses
    finally:
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.close()
