"use strict";
// This page is a client of the service's public HTTP API and of nothing else:
//   GET  /info                                  the served models, their providers and the request limits
//   POST /sample {"seed", "n", "model"}         n base64 PNGs for a seed
//   POST /interpolate[/apng], /interpolate/strip {"seed_a", "seed_b", "steps", "model"}   the latent walk
// Every call names the model picked in the header (/info's "models", the default first).
// URLs are relative to the page (served at <root>/ui/), so it also works behind a path prefix.

const $ = (id) => document.getElementById(id);
const ROOT = new URL("../", document.baseURI);
// Seeds reach 2**63-1, beyond JavaScript's exact integers (2**53): they stay decimal strings and
// BigInt here, and go into the JSON body verbatim.
const MAX_SEED = 2n ** 63n - 1n;

let info = null; // GET /info
let models = []; // /info's "models", the default first ([] from a server that does not list them)
let model = null; // the picked model's name, sent with every call (null: none listed, the server's default)
let shown = { seed: "", images: [] }; // what the grid holds now
let viewing = 0; // index of the image in the enlarged view
let sampleRequest = 0; // only the latest of overlapping /sample calls is drawn
let walkRequest = 0; // only the latest of overlapping walks is shown
let walkUrls = []; // object URLs of the walk's images, released when replaced
let walkEdited = false; // seeds A/B follow the gallery's seed until the user types their own

// A field's text as a JSON value: digits as a number, anything else as a string, which the
// service refuses with a 422 that names the field (shown to the user as is).
const intJson = (text) => (/^[0-9]+$/.test(text.trim()) ? text.trim() : JSON.stringify(text));
const jsonBody = (fields) => "{" + Object.entries(fields).map(([k, v]) => `"${k}": ${v}`).join(", ") + "}";

async function post(path, fields, outFile) {
  const url = new URL(path, ROOT);
  const body = jsonBody(model === null ? fields : { ...fields, model: JSON.stringify(model) });
  const curl = `curl -s ${url} -H 'Content-Type: application/json' -d '${body}'` + (outFile ? ` -o ${outFile}` : "");
  const started = performance.now();
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const ms = Math.round(performance.now() - started);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = `${response.status}: ${(await response.json()).error}`;
    } catch {
      // not one of the service's JSON errors (a proxy's page, say): keep the status line
    }
    throw new Error(message);
  }
  return { response, ms, curl };
}

function setStatus(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

function showCurl(curl) {
  $("curl").textContent = curl;
}

// ---- model info ----

async function loadInfo(asked) {
  const response = await fetch(new URL("info", ROOT));
  if (!response.ok) throw new Error(`GET /info: ${response.status}`);
  info = await response.json();
  models = info.models ?? [];
  const options = models.map((m) => Object.assign(new Option(m.name, m.name), { title: m.tag })); // the version: in "tag"
  $("model-select").replaceChildren(...options);
  $("model-select").disabled = models.length < 2; // shown all the same: it says what the server serves
  $("model-picker").hidden = models.length === 0;
  // The page's ?model= if the server serves it, else the default (the first).
  model = models.length ? (models.find((m) => m.name === asked) ?? models[0]).name : null;
  $("model-select").value = model ?? "";
  showModel();
  $("n").max = info.limits.max_n;
  $("steps").max = info.limits.max_steps;
}

function showModel() {
  // The picked model's entry of /info's "models"; a server without the list describes its one model at the top level.
  const picked = models.find((m) => m.name === model);
  const m = picked ?? { tag: info.model, provider: info.provider, model_file: info.model_file, ...info.manifest.model };
  $("model-tag").textContent = m.tag;
  $("model-provider").textContent = m.provider.replace("ExecutionProvider", "");
  $("model-provider").title = `${m.provider}, ${m.model_file}`;
  $("model-provider").classList.toggle("gpu", m.provider.startsWith("CUDA"));
  $("model-shape").textContent = `${m.image_size}×${m.image_size} ${m.channels === 1 ? "gray" : "RGB"} · nz ${m.nz}`;
  // Whole-number upscaling keeps every pixel the same size: 32 px images in 96 px tiles (+ 1 px border each side).
  const scale = Math.max(1, Math.round(96 / m.image_size));
  document.documentElement.style.setProperty("--tile", `${m.image_size * scale + 2}px`);
}

function pickModel(name) {
  model = name;
  showModel();
  showSamples();
  playWalk();
}

// A name for saved files: "dcgan" for the default model, the model's name for another one.
const fileStem = (name) => (name === null || name === models[0]?.name ? "dcgan" : name);

// ---- gallery ----

function fittingN() {
  // As many tiles as the grid's area holds, so the default fills the screen.
  const style = getComputedStyle(document.documentElement);
  const tile = parseFloat(style.getPropertyValue("--tile"));
  const gap = parseFloat(style.getPropertyValue("--gap"));
  const grid = $("grid");
  const cols = Math.max(1, Math.floor((grid.clientWidth + gap) / (tile + gap)));
  const rows = Math.max(1, Math.floor((grid.clientHeight + gap) / (tile + gap)));
  return Math.min(cols * rows, info ? info.limits.max_n : 16);
}

async function showSamples() {
  const seed = $("seed").value.trim();
  const n = $("n").value.trim();
  const asked = model;
  const mine = ++sampleRequest;
  $("grid").classList.add("loading");
  setStatus("sample-status", "generating…");
  try {
    const { response, ms, curl } = await post("sample", { seed: intJson(seed), n: intJson(n) });
    const data = await response.json();
    if (mine !== sampleRequest) return;
    shown = { seed, model: asked, stem: fileStem(asked), images: data.images, width: data.width, height: data.height };
    drawGrid();
    setStatus("sample-status", `${data.images.length} images · ${ms} ms`);
    showCurl(curl);
    // The page's own address can be shared: it names the model too, unless that is the default.
    const other = fileStem(asked) === "dcgan" ? "" : `&model=${encodeURIComponent(asked)}`;
    history.replaceState(null, "", `?seed=${seed}&n=${n}${other}`);
    if (!walkEdited) {
      $("seed-a").value = seed;
      $("seed-b").value = stepped(seed, 1n);
    }
  } catch (e) {
    if (mine === sampleRequest) setStatus("sample-status", e.message, true);
  } finally {
    if (mine === sampleRequest) $("grid").classList.remove("loading");
  }
}

function drawGrid() {
  const tiles = shown.images.map((b64, i) => {
    const tile = document.createElement("button");
    tile.type = "button";
    tile.className = "tile";
    tile.title = `seed ${shown.seed}, image ${i} (click to enlarge)`;
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${b64}`;
    img.alt = `seed ${shown.seed}, image ${i}`;
    const label = document.createElement("span");
    label.textContent = i;
    tile.append(img, label);
    tile.addEventListener("click", () => openViewer(i));
    return tile;
  });
  $("grid").replaceChildren(...tiles);
  $("grid").dataset.seed = shown.seed;
  $("grid").dataset.model = shown.model ?? "";
}

function stepped(seedText, delta) {
  let seed = /^[0-9]+$/.test(seedText.trim()) ? BigInt(seedText.trim()) : 0n;
  seed += delta;
  if (seed < 0n) seed = MAX_SEED;
  if (seed > MAX_SEED) seed = 0n;
  return seed.toString();
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0].toString();
}

function goTo(seed) {
  $("seed").value = seed;
  showSamples();
}

// ---- enlarged view ----

function openViewer(i) {
  viewing = (i + shown.images.length) % shown.images.length;
  const src = `data:image/png;base64,${shown.images[viewing]}`;
  $("viewer-image").src = src;
  $("viewer-image").alt = `seed ${shown.seed}, image ${viewing}`;
  $("viewer-caption").textContent =
    `seed ${shown.seed} · image ${viewing} of ${shown.images.length} · ${shown.width}×${shown.height}`;
  $("viewer-download").href = src;
  $("viewer-download").download = `${shown.stem}-seed${shown.seed}-${viewing}.png`;
  if (!$("viewer").open) $("viewer").showModal();
}

// ---- latent walk ----

async function playWalk() {
  const fields = {
    seed_a: intJson($("seed-a").value),
    seed_b: intJson($("seed-b").value),
    steps: intJson($("steps").value),
  };
  const format = document.querySelector('input[name="format"]:checked').value;
  const name = `${fileStem(model)}-walk-${$("seed-a").value.trim()}-${$("seed-b").value.trim()}-${$("steps").value}`;
  const animationFile = `${name}.${format === "gif" ? "gif" : "png"}`;
  const asked = model;
  const mine = ++walkRequest;
  setStatus("walk-status", "generating…");
  try {
    const [animation, strip] = await Promise.all([
      post(format === "gif" ? "interpolate" : "interpolate/apng", fields, animationFile),
      post("interpolate/strip", fields, `${name}-strip.png`),
    ]);
    const [animationBlob, stripBlob] = await Promise.all([animation.response.blob(), strip.response.blob()]);
    if (mine !== walkRequest) return;
    walkUrls.forEach((url) => URL.revokeObjectURL(url));
    walkUrls = [URL.createObjectURL(animationBlob), URL.createObjectURL(stripBlob)];
    show("walk-image", "walk-download", walkUrls[0], animationFile);
    show("walk-strip", "strip-download", walkUrls[1], `${name}-strip.png`);
    $("walk-download").title = `save ${animationFile}`;
    const frames = animation.response.headers.get("X-Steps");
    $("walk-image").dataset.format = format;
    $("walk-image").dataset.steps = frames;
    $("walk-image").dataset.model = asked ?? "";
    setStatus("walk-status", `${frames} frames · ${(animationBlob.size / 1024).toFixed(1)} KB · ${animation.ms} ms`);
    showCurl(animation.curl);
  } catch (e) {
    if (mine === walkRequest) setStatus("walk-status", e.message, true);
  }
}

function show(imageId, linkId, url, filename) {
  $(imageId).src = url;
  $(linkId).href = url;
  $(linkId).download = filename;
  $(linkId).hidden = false;
}

// ---- wiring ----

function wire() {
  $("model-select").addEventListener("change", () => pickModel($("model-select").value));
  $("sample-form").addEventListener("submit", (e) => {
    e.preventDefault();
    showSamples();
  });
  $("prev").addEventListener("click", () => goTo(stepped($("seed").value, -1n)));
  $("next").addEventListener("click", () => goTo(stepped($("seed").value, 1n)));
  $("random").addEventListener("click", () => goTo(randomSeed()));

  $("walk-form").addEventListener("submit", (e) => {
    e.preventDefault();
    playWalk();
  });
  for (const id of ["seed-a", "seed-b"]) $(id).addEventListener("input", () => (walkEdited = true));
  $("steps").addEventListener("input", () => ($("steps-value").textContent = $("steps").value));

  $("viewer-prev").addEventListener("click", () => openViewer(viewing - 1));
  $("viewer-next").addEventListener("click", () => openViewer(viewing + 1));
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("click", (e) => {
    if (e.target === $("viewer")) $("viewer").close(); // a click on the backdrop
  });

  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select") || e.altKey || e.ctrlKey || e.metaKey) return;
    if ($("viewer").open) {
      if (e.key === "ArrowLeft") openViewer(viewing - 1);
      if (e.key === "ArrowRight") openViewer(viewing + 1);
      return;
    }
    if (e.key === "ArrowLeft") goTo(stepped($("seed").value, -1n));
    if (e.key === "ArrowRight") goTo(stepped($("seed").value, 1n));
    if (e.key === "r") goTo(randomSeed());
  });
}

async function start() {
  wire();
  const params = new URLSearchParams(location.search);
  try {
    await loadInfo(params.get("model"));
  } catch (e) {
    $("model-tag").textContent = `unavailable (${e.message})`;
  }
  $("seed").value = params.get("seed") ?? "42";
  $("n").value = params.get("n") ?? fittingN();
  await showSamples();
  await playWalk();
}

start();
