"""X-Request-ID on every response, and in the log lines of its request (service/api.py, service/logs.py)."""

from __future__ import annotations

import re
import time

import httpx

TIMEOUT = 30


def test_a_request_without_an_id_gets_a_new_one_on_success_and_on_errors(service_url):
    ids = set()
    for method, path, body in (("POST", "/sample", {"seed": 1}), ("POST", "/sample", {"seed": -1}), ("GET", "/nowhere", None)):
        r = httpx.request(method, f"{service_url}{path}", json=body, timeout=TIMEOUT)
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), (path, r.status_code, r.headers)
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 3


def test_a_valid_client_id_is_echoed_and_an_invalid_one_replaced(service_url):
    for given in ("abc-123", "trace:7f.e_1", "x" * 128):
        r = httpx.post(f"{service_url}/sample", json={"seed": 1, "n": 99}, headers={"X-Request-ID": given}, timeout=TIMEOUT)
        assert r.status_code == 422 and r.headers["x-request-id"] == given
    for bad in ("x" * 129, "has space", "semi;colon", "pct%d"):
        r = httpx.post(f"{service_url}/sample", json={"seed": 1}, headers={"X-Request-ID": bad}, timeout=TIMEOUT)
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad


def test_the_access_log_names_each_request_by_its_id(start_service):
    """DCGAN_ACCESS_LOG=1: one access line per request, ending with the request's id."""
    with start_service({"DCGAN_ACCESS_LOG": "1"}) as server:
        ok = httpx.post(f"{server.url}/sample", json={"seed": 3}, headers={"X-Request-ID": "ok-request-1"}, timeout=TIMEOUT)
        bad = httpx.post(f"{server.url}/sample", json={"seed": "3"}, headers={"X-Request-ID": "bad-request-2"}, timeout=TIMEOUT)
        assert (ok.status_code, bad.status_code) == (200, 422)
        time.sleep(0.5)  # the access log line is written as the response ends
        log = server.log()
    (ok_line,) = [line for line in log.splitlines() if "request_id=ok-request-1" in line]
    (bad_line,) = [line for line in log.splitlines() if "request_id=bad-request-2" in line]
    assert "path=/sample" in ok_line and "status=200" in ok_line, ok_line
    assert "status=422" in bad_line, bad_line


def test_json_log_lines_carry_the_access_fields(start_service):
    """DCGAN_LOG_FORMAT=json: one JSON object per line; each access line has request id, route, status, duration, model
    and refusal reason."""
    import json

    env = {"DCGAN_ACCESS_LOG": "1", "DCGAN_LOG_FORMAT": "json", "DCGAN_API_KEY": "k"}
    with start_service(env) as server:
        auth = {"Authorization": "Bearer k"}
        ok = httpx.get(f"{server.url}/sample/grid?seed=3&n=2", headers={**auth, "X-Request-ID": "json-ok"}, timeout=TIMEOUT)
        refused = httpx.post(f"{server.url}/sample", json={"seed": 3}, headers={"X-Request-ID": "json-401"}, timeout=TIMEOUT)
        assert (ok.status_code, refused.status_code) == (200, 401)
        time.sleep(0.5)
        log = server.log()
    lines = {}
    for line in log.splitlines():
        if '"request_id": "json-' in line:
            record = json.loads(line[line.index("{") :])  # the whole line from its first brace is one object
            if "route" in record:
                lines[record["request_id"]] = record
    ok_line, refused_line = lines["json-ok"], lines["json-401"]
    assert ok_line["route"] == "/sample/grid" and ok_line["status"] == 200 and ok_line["reason"] is None, ok_line
    assert ok_line["model"].startswith("dcgan-generator:") and ok_line["duration_ms"] > 0 and ok_line["method"] == "GET"
    assert refused_line["status"] == 401 and refused_line["reason"] == "unauthorised", refused_line
