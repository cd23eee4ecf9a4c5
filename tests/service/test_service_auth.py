"""Optional access control: with DCGAN_API_KEY set, generation routes and /info want the key; probes stay open."""

from __future__ import annotations

import httpx
import pytest
from helpers import refused

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def url(start_service):
    with start_service({"DCGAN_API_KEY": KEY}) as server:
        yield server.url


@pytest.mark.parametrize(
    ("method", "path", "body", "label"),
    [
        ("POST", "/sample", {"seed": 1}, "/sample"),
        ("GET", "/sample/grid?seed=1&n=4", None, "/sample/grid"),
        ("POST", "/interpolate", {"seed_a": 1, "seed_b": 2}, "/interpolate"),
        ("GET", "/info", None, "/info"),
        ("GET", "/v2/models/dcgan", None, "/v2"),
        ("POST", "/v2/repository/index", None, "/v2"),
    ],
)
def test_protected_routes_want_the_key(url, method, path, body, label):
    """Each refusal answered 401 with what to send, and counted under its route's label."""
    counted = refused(url, "unauthorised", route=label)
    for headers, why in [
        ({}, "missing Authorization header"),
        ({"Authorization": "Bearer wrong"}, "wrong API key"),
        ({"Authorization": KEY}, "wrong API key"),
    ]:
        r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"].startswith(why), r.text
    r = httpx.request(method, f"{url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert refused(url, "unauthorised", route=label) == counted + 3


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_probes_and_metrics_stay_open(url, path):
    assert httpx.get(f"{url}{path}", timeout=30).status_code == 200
