"""Latent interpolation: slerp itself, the animation encoders, and POST/GET /interpolate[/apng|/strip] on the real server."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageSequence

from contract.latents import latents_for_seed
from contract.pixels import to_uint8
from service.images import END_FRAME_MS, FRAME_MS, animation_bytes, grid
from service.interpolate import interpolation_latents, slerp

TIMEOUT = 60
FORMS = ["/interpolate", "/interpolate/apng", "/interpolate/strip"]


# ---- slerp, no server ----


def test_slerp_ends_exactly_on_both_latents():
    a, b = latents_for_seed(1, 1, 100)[0], latents_for_seed(2, 1, 100)[0]
    path = slerp(a, b, 7)
    assert path.shape == (7, 100) and path.dtype == np.float32
    assert np.array_equal(path[0], a) and np.array_equal(path[-1], b)


def angle(u: np.ndarray, v: np.ndarray) -> float:
    u, v = u.astype(np.float64), v.astype(np.float64)
    return float(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1)))


def test_slerp_walks_the_arc_in_equal_angles_at_constant_norm():
    a, b = latents_for_seed(3, 1, 100)[0], latents_for_seed(4, 1, 100)[0]
    b = b * (np.linalg.norm(a) / np.linalg.norm(b))  # equal norms: the path is an arc of their great circle
    path = slerp(a, b, 9)
    assert np.allclose([angle(path[k], path[k + 1]) for k in range(8)], angle(a, b) / 8, atol=1e-5)
    assert np.allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-5)


def test_slerp_stays_in_the_plane_of_its_ends_with_norms_between_theirs():
    a, b = latents_for_seed(3, 1, 100)[0], latents_for_seed(4, 1, 100)[0]
    path = slerp(a, b, 9).astype(np.float64)
    basis = np.stack([a, b], axis=1).astype(np.float64)  # (nz, 2)
    coeffs, *_ = np.linalg.lstsq(basis, path.T, rcond=None)
    assert np.allclose(basis @ coeffs, path.T, atol=1e-4)
    norms, (low, high) = np.linalg.norm(path, axis=1), sorted([np.linalg.norm(a), np.linalg.norm(b)])
    assert (norms >= low - 1e-4).all() and (norms <= high + 1e-4).all()


def test_slerp_keeps_the_norm_where_the_straight_line_loses_it():
    a, b = np.eye(2, dtype=np.float32)  # unit vectors at 90 degrees
    mid = slerp(a, b, 3)[1]
    assert np.isclose(np.linalg.norm(mid), 1.0, atol=1e-6)
    assert np.isclose(np.linalg.norm((a + b) / 2), 0.5**0.5)  # what a straight line would give


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["same", "opposite"])
def test_slerp_of_parallel_latents_is_finite(sign):
    a = latents_for_seed(5, 1, 100)[0]
    path = slerp(a, sign * a, 5)
    assert np.isfinite(path).all()
    assert np.array_equal(path[0], a) and np.array_equal(path[-1], sign * a)


def test_interpolation_latents_are_a_function_of_seeds_and_steps():
    first = interpolation_latents(10, 20, 6, 100)
    assert np.array_equal(first, interpolation_latents(10, 20, 6, 100))
    assert np.array_equal(first[0], latents_for_seed(10, 1, 100)[0]) and np.array_equal(first[-1], latents_for_seed(20, 1, 100)[0])
    assert not np.array_equal(first, interpolation_latents(10, 21, 6, 100))


# ---- encoders, no server ----


def frames_of(data: bytes) -> tuple[np.ndarray, list[int], dict]:
    """An animation file -> (T, H, W) uint8 grayscale frames, each frame's duration in ms, the file's info."""
    image = Image.open(io.BytesIO(data))
    frames, durations = [], []
    for frame in ImageSequence.Iterator(image):
        frames.append(np.asarray(frame.convert("L")))
        durations.append(int(frame.info["duration"]))
    return np.stack(frames), durations, image.info


@pytest.mark.parametrize(("file_format", "pil_format"), [("GIF", "GIF"), ("PNG", "PNG")])
def test_animation_holds_every_grayscale_frame_exactly(file_format, pil_format):
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    data = animation_bytes(frames, file_format)
    assert Image.open(io.BytesIO(data)).format == pil_format
    decoded, durations, info = frames_of(data)
    assert np.array_equal(decoded, frames[..., 0])
    assert durations == [END_FRAME_MS, FRAME_MS, FRAME_MS, FRAME_MS, END_FRAME_MS]
    assert info["loop"] == 0  # forever


def test_strip_is_one_row_of_frames():
    frames = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
    strip = grid(frames, cols=3)
    assert strip.shape == (4 + 4, 3 * (4 + 2) + 2, 1)
    assert np.array_equal(strip[2:6, 8:12], frames[1])


# ---- the HTTP routes, against the session's real server (conftest.py) ----


def post(url: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def manifest(service_artifact) -> dict:
    return json.loads((service_artifact / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(service_artifact, manifest):
    """The frames the service must return, computed here with ONNX Runtime on the artifact and slerp latents."""
    session = ort.InferenceSession(str(service_artifact / "generator.onnx"), providers=["CPUExecutionProvider"])

    def frames(seed_a: int, seed_b: int, steps: int) -> np.ndarray:  # (steps, H, W) uint8, the model is grayscale
        (out,) = session.run(None, {"z": interpolation_latents(seed_a, seed_b, steps, manifest["model"]["nz"])})
        return to_uint8(out)[:, 0]

    assert manifest["model"]["channels"] == 1
    return frames


def strip_frames(data: bytes, steps: int) -> np.ndarray:
    """A /interpolate/strip PNG -> (steps, H, W) frames, cut along the 2 px gaps."""
    strip = np.asarray(Image.open(io.BytesIO(data)))
    h = strip.shape[0] - 4
    return np.stack([strip[2 : 2 + h, 2 + k * (h + 2) : 2 + k * (h + 2) + h] for k in range(steps)])


def decoded(path: str, data: bytes, steps: int) -> np.ndarray:
    return strip_frames(data, steps) if path.endswith("strip") else frames_of(data)[0]


def level_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize(
    ("path", "media_type", "image_format"),
    [
        ("/interpolate", "image/gif", "GIF"),
        ("/interpolate/apng", "image/apng", "PNG"),
        ("/interpolate/strip", "image/png", "PNG"),
    ],
)
def test_each_form_holds_the_slerp_frames(service_url, reference, manifest, path, media_type, image_format):
    r = post(service_url, path, {"seed_a": 3, "seed_b": 11, "steps": 6})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    size = manifest["model"]["image_size"]
    assert (r.headers["x-seed-a"], r.headers["x-seed-b"], r.headers["x-steps"]) == ("3", "11", "6")
    assert r.headers["x-shape"] == f"6,{size},{size},1"
    assert Image.open(io.BytesIO(r.content)).format == image_format
    assert level_diff(decoded(path, r.content, 6), reference(3, 11, 6)) <= 1


def test_the_ends_are_image_0_of_each_seed(service_url):
    def first_image(seed: int) -> np.ndarray:
        r = post(service_url, "/sample/raw", {"seed": seed, "n": 1})
        return np.frombuffer(r.content, np.uint8).reshape(tuple(int(d) for d in r.headers["x-shape"].split(",")))[0, :, :, 0]

    frames = strip_frames(post(service_url, "/interpolate/strip", {"seed_a": 21, "seed_b": 2**63 - 1, "steps": 4}).content, 4)
    assert level_diff(frames[0], first_image(21)) <= 1
    assert level_diff(frames[-1], first_image(2**63 - 1)) <= 1


def test_steps_defaults_to_16(service_url):
    r = post(service_url, "/interpolate/strip", {"seed_a": 1, "seed_b": 2})
    assert r.status_code == 200 and r.headers["x-steps"] == "16"


@pytest.mark.parametrize("path", FORMS)
def test_same_request_gives_identical_bytes_by_post_and_get(service_url, path):
    body = {"seed_a": 8, "seed_b": 9, "steps": 5}
    first, second = post(service_url, path, body), post(service_url, path, body)
    by_get = httpx.get(f"{service_url}{path}", params=body, timeout=TIMEOUT)
    assert first.status_code == second.status_code == by_get.status_code == 200
    assert first.content == second.content == by_get.content


def test_one_seed_to_itself_is_a_still(service_url):
    frames = strip_frames(post(service_url, "/interpolate/strip", {"seed_a": 4, "seed_b": 4, "steps": 3}).content, 3)
    assert (frames == frames[0]).all()


BAD_BODIES = [
    ({}, "seed_a"),
    ({"seed_a": 1}, "seed_b"),
    ({"seed_a": -1, "seed_b": 2}, "seed_a"),
    ({"seed_a": 1, "seed_b": 2**63}, "seed_b"),
    ({"seed_a": "1", "seed_b": 2}, "seed_a"),
    ({"seed_a": 1, "seed_b": 2.0}, "seed_b"),
    ({"seed_a": 1, "seed_b": 2, "steps": 1}, "steps"),
    ({"seed_a": 1, "seed_b": 2, "steps": 65}, "steps"),
    ({"seed_a": 1, "seed_b": 2, "steps": True}, "steps"),
    ({"seed_a": 1, "seed_b": 2, "n": 4}, "n"),
    ({"seed": 1, "seed_a": 1, "seed_b": 2}, "seed"),
    ([1, 2], "body"),
]


@pytest.mark.parametrize("path", FORMS)
@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[json.dumps(b) for b, _ in BAD_BODIES])
def test_invalid_fields_get_a_422_naming_the_field(service_url, path, body, field):
    r = post(service_url, path, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(f"{field} ")
    assert field in {e["field"] for e in r.json()["errors"]}


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"not json", {"Content-Type": "application/json"}, 400),
        (b'{"seed_a": 1, "seed_b": 2}', {"Content-Type": "text/plain"}, 415),
        (b'{"seed_a": 1, "seed_b": 2}' + b" " * 5000, {"Content-Type": "application/json"}, 413),
    ],
    ids=["not-json", "text-plain", "oversized"],
)
def test_malformed_bodies_get_a_4xx_json_error(service_url, content, headers, status):
    r = httpx.post(f"{service_url}/interpolate", content=content, headers=headers, timeout=TIMEOUT)
    assert r.status_code == status, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("query", [{}, {"seed_a": "1", "seed_b": "x"}, {"seed_a": "1", "seed_b": "2", "steps": "99"}])
def test_get_query_is_validated(service_url, query):
    r = httpx.get(f"{service_url}/interpolate", params=query, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["errors"]


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_wrong_method_gets_405_json(service_url, method):
    r = httpx.request(method, f"{service_url}/interpolate/strip", timeout=TIMEOUT)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST" and method in r.json()["error"]


def test_info_states_the_interpolation_and_its_bound(service_url):
    info = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()
    assert info["limits"]["max_steps"] == 64
    assert info["interpolation"].startswith("slerp(latents_for_seed(seed_a, 1, nz)[0]")
