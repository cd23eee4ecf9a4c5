"""The page at /ui/: its routes, then the page itself in headless Chromium (Debian's package, driven by Playwright).

The browser tests run against the session's real server, and the model picker's against a server of two models
(the `two_models` fixture). To run the others against another server (the README's screenshot is taken with the
trained default model), set DCGAN_PAGE_URL:

    DCGAN_PAGE_URL=http://127.0.0.1:3000 .venv/bin/pytest tests/system/test_page.py   # -> test-artifacts/page.png
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from common.paths import REPO_ROOT as REPO

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

TIMEOUT = 60
CHROMIUM = Path("/usr/bin/chromium")
# No GPU, no sandbox (root in a container), and nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOT = REPO / "test-artifacts" / "page.png"
WAIT_MS = 30_000  # one call generates up to 64 images; the shared 2-core box may be busy


# ---- routes, no browser ----


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_root_and_ui_redirect_to_the_page(service_url, path):
    r = httpx.get(f"{service_url}{path}", timeout=TIMEOUT)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = httpx.get(f"{service_url}{path}", follow_redirects=True, timeout=TIMEOUT)
    assert page.status_code == 200 and str(page.url) == f"{service_url}/ui/"
    assert page.headers["content-type"].startswith("text/html") and "<title>DCGAN generator</title>" in page.text


@pytest.mark.parametrize(("name", "media_type"), [("app.js", "text/javascript"), ("style.css", "text/css")])
def test_page_assets_are_served(service_url, name, media_type):
    r = httpx.get(f"{service_url}/ui/{name}", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
    assert r.content == (REPO / "service" / "page" / name).read_bytes()


def test_swagger_ui_moved_to_docs(service_url):
    r = httpx.get(f"{service_url}/docs", timeout=TIMEOUT)
    assert r.status_code == 200 and 'id="swagger-ui"' in r.text
    # Its assets resolve relative to /docs, as they did relative to /.
    assert httpx.get(f"{service_url}/static_content/swagger-ui.css", timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{service_url}/docs.json", timeout=TIMEOUT).json()["paths"]["/interpolate"]["post"]


# ---- the page in a browser ----


@pytest.fixture(scope="module")
def page_url(request) -> str:
    return os.environ.get("DCGAN_PAGE_URL") or request.getfixturevalue("service_url")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile; it may request nothing but the service under test."""
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI"):  # CI must test the page, never pass without it
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        try:
            yield context
        finally:
            context.close()


class Watched:
    """A page plus what went wrong on it: console errors, uncaught exceptions, requests to other hosts (no CDN)."""

    def __init__(self, context, base: str) -> None:
        self.page, self.problems = context.new_page(), []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))

        def only_the_service(route):
            if route.request.url.startswith(base):
                return route.continue_()
            self.problems.append(f"request to {route.request.url}")
            return route.abort()

        self.page.route("**/*", only_the_service)


@pytest.fixture
def watched(browser, page_url):
    w = Watched(browser, page_url)
    yield w
    w.page.close()
    assert not w.problems


def wait_for_grid(page, seed: str, model: str | None = None) -> list[str]:
    """Wait until the grid shows `seed` (of `model`, where given) with every image decoded; returns the images' base64 PNGs."""
    of_model = f'[data-model="{model}"]' if model else ""
    page.wait_for_selector(f'#grid[data-seed="{seed}"]{of_model}:not(.loading)', timeout=WAIT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)", timeout=WAIT_MS
    )
    sources = page.eval_on_selector_all("#grid img", "images => images.map(i => i.src)")
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    return [s.removeprefix("data:image/png;base64,") for s in sources]


def decode_pngs(encoded: list[str]) -> list[Image.Image]:
    images = []
    for b64 in encoded:
        image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        image.load()  # decodes every pixel: a truncated or corrupt file fails here
        assert image.format == "PNG"
        images.append(image)
    return images


def api_images(url: str, seed: str, n: int, model: str | None = None) -> list[str]:
    r = httpx.post(f"{url}/sample", json={"seed": int(seed), "n": n, **({"model": model} if model else {})}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["images"]


def blob_bytes(page, selector: str) -> bytes:
    """The bytes behind an <img src="blob:..."> (what the page fetched from the API)."""
    data = page.eval_on_selector(selector, "async img => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))")
    return bytes(data)


def test_page_shows_the_model_and_a_screenful_of_images_then_the_walk(watched, page_url):
    page = watched.page
    page.goto(f"{page_url}/")
    assert urlsplit(page.url).path == "/ui/"
    encoded = wait_for_grid(page, "42")
    n = int(parse_qs(urlsplit(page.url).query)["n"][0])
    info = httpx.get(f"{page_url}/info", timeout=TIMEOUT).json()
    assert 16 <= n <= info["limits"]["max_n"]  # the default fills a 1280x800 window, up to the API's limit
    assert encoded == api_images(page_url, "42", n)  # the page shows exactly what the API returns
    size = info["manifest"]["model"]["image_size"]
    assert {image.size for image in decode_pngs(encoded)} == {(size, size)}

    assert page.text_content("#model-tag") == info["model"]
    assert page.text_content("#model-provider") == info["provider"].removesuffix("ExecutionProvider")
    # The picker lists the served models, the default picked (a one-model server's is there, but nothing to pick).
    names = [m["name"] for m in info["models"]]
    assert page.eval_on_selector_all("#model-select option", "options => options.map(o => o.value)") == names
    assert page.input_value("#model-select") == names[0] and page.is_disabled("#model-select") == (len(names) == 1)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 21)"  # style.css loaded

    page.wait_for_selector('#walk-image[data-steps="16"]', timeout=WAIT_MS)  # the page plays a walk on load
    page.wait_for_function("() => document.querySelector('#walk-image').naturalWidth > 0", timeout=WAIT_MS)
    page.wait_for_timeout(800)  # let the animation move past its first frame for the picture
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT)
    assert Image.open(SCREENSHOT).size == (VIEWPORT["width"], VIEWPORT["height"])


def test_changing_the_seed_shows_that_seeds_images(watched, page_url):
    page = watched.page
    page.goto(f"{page_url}/ui/?seed=100&n=6")
    first = wait_for_grid(page, "100")

    page.click("#next")
    after_next = wait_for_grid(page, "101")
    assert after_next == api_images(page_url, "101", 6) and after_next != first
    decode_pngs(after_next)

    page.fill("#seed", "9223372036854775807")  # 2**63-1: beyond JavaScript's exact integers
    page.press("#seed", "Enter")
    assert wait_for_grid(page, "9223372036854775807") == api_images(page_url, "9223372036854775807", 6)

    page.click("#random")
    page.wait_for_function("() => !['9223372036854775807', ''].includes(document.querySelector('#grid').dataset.seed)")
    seed = page.get_attribute("#grid", "data-seed")
    assert re.fullmatch(r"[0-9]+", seed)
    assert wait_for_grid(page, seed) == api_images(page_url, seed, 6)
    assert urlsplit(page.url).query == f"seed={seed}&n=6"


def test_an_image_enlarges_and_downloads_as_its_png(watched, page_url, tmp_path):
    page = watched.page
    page.goto(f"{page_url}/ui/?seed=5&n=4")
    encoded = wait_for_grid(page, "5")
    page.click("#grid .tile:nth-child(3)")
    page.wait_for_selector("#viewer[open]")
    assert page.get_attribute("#viewer-image", "src") == f"data:image/png;base64,{encoded[2]}"
    assert page.evaluate("document.querySelector('#viewer-image').getBoundingClientRect().width") >= 256  # larger view

    with page.expect_download() as download_info:
        page.click("#viewer-download")
    download = download_info.value
    assert download.suggested_filename == "dcgan-seed5-2.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == base64.b64decode(encoded[2])

    page.click("#viewer-next")
    assert page.get_attribute("#viewer-image", "src") == f"data:image/png;base64,{encoded[3]}"
    page.click("#viewer-close")
    page.wait_for_selector("#viewer", state="hidden")


@pytest.mark.parametrize(("form", "route", "image_format"), [("gif", "/interpolate", "GIF"), ("apng", "/interpolate/apng", "PNG")])
def test_the_latent_walk_plays(watched, page_url, form, route, image_format):
    page = watched.page
    page.goto(f"{page_url}/ui/?seed=1&n=1")
    page.wait_for_selector('#walk-image[data-steps="16"]', timeout=WAIT_MS)  # the walk played on load

    page.fill("#seed-a", "3")
    page.fill("#seed-b", "9")
    page.eval_on_selector("#steps", "range => { range.value = 8; range.dispatchEvent(new Event('input')); }")
    assert page.text_content("#steps-value") == "8"
    page.check(f'input[name="format"][value="{form}"]')
    page.click("#play")
    page.wait_for_selector(f'#walk-image[data-steps="8"][data-format="{form}"]', timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('#walk-image').naturalWidth > 0", timeout=WAIT_MS)

    body = {"seed_a": 3, "seed_b": 9, "steps": 8}
    animation = blob_bytes(page, "#walk-image")
    assert animation == httpx.post(f"{page_url}{route}", json=body, timeout=TIMEOUT).content
    image = Image.open(io.BytesIO(animation))
    assert image.format == image_format and image.n_frames == 8 and image.info["loop"] == 0
    strip = blob_bytes(page, "#walk-strip")
    assert strip == httpx.post(f"{page_url}/interpolate/strip", json=body, timeout=TIMEOUT).content
    assert page.get_attribute("#walk-download", "download") == f"dcgan-walk-3-9-8.{'gif' if form == 'gif' else 'png'}"
    assert "/interpolate" in page.text_content("#curl")


def test_a_bad_seed_shows_the_services_error(watched, page_url):
    page = watched.page
    page.goto(f"{page_url}/ui/?seed=1&n=2")
    wait_for_grid(page, "1")
    page.fill("#seed", "12x")
    page.press("#seed", "Enter")
    page.wait_for_selector("#sample-status.error", timeout=WAIT_MS)
    assert (
        page.text_content("#sample-status")
        == "422: seed must be an integer (a JSON number without fraction or exponent; not a boolean or a string)"
    )
    assert page.get_attribute("#grid", "data-seed") == "1"  # the last good images stay
    # Chromium logs every 4xx fetch as a console error; this one was the point of the test.
    logged = [p for p in watched.problems if "status of 422" in p]
    assert len(logged) == 1
    watched.problems.remove(logged[0])


# ---- the model picker, against a server of two models ----

GENERATION_ROUTES = ("/sample", "/interpolate", "/interpolate/apng", "/interpolate/strip")


@pytest.fixture
def two_models_page(browser, two_models):
    w = Watched(browser, two_models.url)
    yield w
    w.page.close()
    assert not w.problems


def test_the_model_picker_sends_every_call_to_the_picked_model(two_models_page, two_models):
    url, page = two_models.url, two_models_page.page
    tags = {m["name"]: m["tag"] for m in httpx.get(f"{url}/info", timeout=TIMEOUT).json()["models"]}
    calls = []  # (route, the JSON body's model) of every generation call the page makes

    def record(request) -> None:
        route = urlsplit(request.url).path
        if route in GENERATION_ROUTES:
            calls.append((route, (request.post_data_json or {}).get("model")))

    page.on("request", record)
    page.goto(f"{url}/ui/?seed=7&n=4")
    default = wait_for_grid(page, "7", "dcgan-generator")
    page.wait_for_selector('#walk-image[data-steps="16"][data-model="dcgan-generator"]', timeout=WAIT_MS)
    options = page.eval_on_selector_all("#model-select option", "options => options.map(o => [o.value, o.textContent, o.title])")
    assert options == [[name, name, tag] for name, tag in tags.items()]
    assert list(tags) == ["dcgan-generator", "dcgan-other"]
    assert page.input_value("#model-select") == "dcgan-generator" and not page.is_disabled("#model-select")
    assert page.get_by_role("combobox", name=re.compile(r"^model\b")).get_attribute("id") == "model-select"  # labelled
    assert page.text_content("#model-tag") == tags["dcgan-generator"]
    assert default == api_images(url, "7", 4)  # the default model's images, named in every call
    assert sorted(calls) == [("/interpolate", "dcgan-generator"), ("/interpolate/strip", "dcgan-generator"), ("/sample", "dcgan-generator")]
    default_walk = blob_bytes(page, "#walk-image")

    calls.clear()
    page.select_option("#model-select", "dcgan-other")  # the gallery and the walk again, of the other model
    other = wait_for_grid(page, "7", "dcgan-other")
    page.wait_for_selector('#walk-image[data-steps="16"][data-model="dcgan-other"]', timeout=WAIT_MS)
    assert page.text_content("#model-tag") == tags["dcgan-other"] and tags["dcgan-other"].startswith("dcgan-other:")
    assert sorted(calls) == [("/interpolate", "dcgan-other"), ("/interpolate/strip", "dcgan-other"), ("/sample", "dcgan-other")]
    assert other == api_images(url, "7", 4, model="dcgan-other")
    assert [im.tobytes() for im in decode_pngs(other)] != [im.tobytes() for im in decode_pngs(default)]  # same seed, other weights
    walk = blob_bytes(page, "#walk-image")
    body = {"seed_a": 7, "seed_b": 8, "steps": 16, "model": "dcgan-other"}
    assert walk == httpx.post(f"{url}/interpolate", json=body, timeout=TIMEOUT).content and walk != default_walk
    assert parse_qs(urlsplit(page.url).query) == {"seed": ["7"], "n": ["4"], "model": ["dcgan-other"]}  # a link to share

    calls.clear()
    page.click("#next")  # later calls name it too
    assert wait_for_grid(page, "8", "dcgan-other") == api_images(url, "8", 4, model="dcgan-other")
    assert calls == [("/sample", "dcgan-other")]
    page.click("#grid .tile:nth-child(1)")
    page.wait_for_selector("#viewer[open]")
    assert page.get_attribute("#viewer-download", "download") == "dcgan-other-seed8-0.png"
    page.click("#viewer-close")

    page.reload()  # the page's address names the model: it opens with that model picked
    assert wait_for_grid(page, "8", "dcgan-other") == api_images(url, "8", 4, model="dcgan-other")
    assert page.input_value("#model-select") == "dcgan-other" and page.text_content("#model-tag") == tags["dcgan-other"]
