"""The served models: the names of DCGAN_MODELS, each serving one loaded version at a time, swapped without downtime.

    find(asked)           the Version a request names: "name", "name:version", or None for the default (the first
                          name); NotFound lists the loaded tags
    admit(v) / done(v)    a request holds its Version from admission to answer, so a swap never changes it midway
    load(name, tag)       a swap: the stored version is hash-checked, loaded on ONNX Runtime, warmed up and its golden
                          outputs checked on the serving provider (in a thread, while the old version serves); then new
                          requests go to it at once, and the old version is released once its last admitted request
                          is answered. A version that fails is refused (Conflict: one log line, and
                          dcgan_model_loads_total{outcome="refused"}), and the old one keeps serving.
    follow()              each worker's loop: the versions the admin route pinned in any worker of this server (a file
                          they share), and, with DCGAN_MODEL_POLL_S, the store's latest version of each name given
                          without a version

Each Version has its own generator (its own ONNX Runtime session and threads) and its own coalescer (queue, deadline
accounting, and metrics under its name): one model's overload never queues another model's requests.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.exceptions import NotFound as StoreNotFound

from contract.artifact import ONNX
from contract.store import check_registered
from service import metrics
from service.coalesce import Coalescer
from service.errors import BadRequest, Conflict, NotFound
from service.server_dir import child_of_server, server_dir
from service.settings import ServiceSettings

logger = logging.getLogger("bentoml.dcgan")
ALIAS = "dcgan"  # names the default model too (the v2 routes' name before there were several)
FOLLOW_S = 0.25  # how often a worker looks at the pins file (a stat) and, when due, at the store
WORKERS_WAIT_S = 10.0  # how long the admin route waits for the server's other workers to serve a pinned version
REFUSED_RETRY_S = 60.0  # a version refused here is tried again by follow() after this long (room may have been made)
VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # a BentoML tag's version
MIB = 1 << 20


def onnx_bytes(model_dir: str | Path) -> int:
    """The size the limits count for a stored model: its float32 ONNX file."""
    return (Path(model_dir) / ONNX).stat().st_size


def check_size(sizes: dict[str, int], limit_mb: int) -> None:
    """BentoMLException (one line) when the ONNX files of `sizes` (tag -> bytes) exceed DCGAN_MAX_MODELS_MB together."""
    total = sum(sizes.values())
    if total > limit_mb * MIB:
        listed = ", ".join(f"{tag} {size / MIB:.1f} MiB" for tag, size in sizes.items())
        raise BentoMLException(f"the models' ONNX files take {total / MIB:.1f} MiB ({listed}), more than DCGAN_MAX_MODELS_MB={limit_mb}")


class Version:
    """One loaded version of one name: its generator (service/generators.py) and the coalescer in front of it."""

    def __init__(self, name: str, generator, settings: ServiceSettings, size: int) -> None:
        self.name = name
        self.generator = generator
        self.settings = settings
        self.onnx_bytes = size
        engine = getattr(generator, "engine", None)  # in process: known now; a generator service: once described
        self.tag = engine.tag if engine is not None else ""  # name:version
        self.merged: Coalescer | None = None
        self.described: dict = {}
        self.nz = 0
        self.admitted = 0  # requests admitted on this version and not yet answered
        self.retired = False  # swapped out: released when `admitted` reaches 0
        self.loaded_at = time.time()

    async def ready(self) -> Version:
        """Described, with a coalescer in front of its calls: at the first request or probe (a generator service may
        come up after this worker, so it is not asked earlier)."""
        if self.merged is None:
            described = await self.generator.describe()
            if self.merged is None:  # another request may have got here first
                s = self.settings
                merged = Coalescer(
                    self.generator.generate,
                    s.max_batch_size,
                    s.generator_calls,
                    deadline_s=s.deadline_ms / 1000,
                    max_queued_images=s.max_queued_images,
                    model=self.name,
                )
                self.generator.bind(merged)
                self.described, self.tag, self.nz = described, described["model"], described["manifest"]["model"]["nz"]
                self.merged = merged
        return self

    def summary(self) -> dict:
        """/info's entry of this version."""
        d, m = self.described, self.merged
        return {
            "name": self.name,
            "tag": self.tag,
            "version": self.tag.partition(":")[2],
            "provider": d["provider"],
            "model_file": d["model_file"],
            "image_size": d["manifest"]["model"]["image_size"],
            "channels": d["manifest"]["model"]["channels"],
            "nz": self.nz,
            "onnx_bytes": self.onnx_bytes,
            "golden_ok": d["golden"].get("ok", True),
            "loaded_at": self.loaded_at,
            "requests_in_progress": self.admitted,
            "merging": {
                "generator_calls": m.calls,
                "requests": m.requests,
                "refused": m.refused,
                "dropped_disconnected": m.dropped,
                "seconds_per_image": m.seconds_per_image,
            },
        }


class ModelSet:
    """The loaded versions by name, the default first. `make(stored)` builds a generator for a stored model (blocking:
    it loads and checks the model); `first` holds the generators built at start-up, by name."""

    def __init__(self, settings: ServiceSettings, first: dict[str, object], sizes: dict[str, int], make: Callable) -> None:
        self.settings = settings
        self.names = list(first)
        self.default = self.names[0]
        self.current = {name: Version(name, generator, settings, sizes[name]) for name, generator in first.items()}
        self._make = make
        self._locks = {name: asyncio.Lock() for name in self.names}  # one load per name at a time
        self._pins = PinsFile()
        self._refused: dict[str, float] = {}  # tag -> when it failed its checks here: follow() waits REFUSED_RETRY_S
        self._polled_at = time.monotonic()
        self._follower: asyncio.Task | bool | None = None  # None: not started yet; False: nothing to follow
        for name in self.names:  # both series exist from the start, at 0, so an alert's rate() has one
            for outcome in ("loaded", "refused"):
                metrics.MODEL_LOADS.labels(model=name, outcome=outcome)

    # --- requests ----------------------------------------------------------------------------------------------

    async def find(self, asked: str | None) -> Version:
        """The version serving `asked` (name or name:version; None: the default model). NotFound names what is loaded."""
        if self._follower is None:
            self.start_following()
        name, _, version = (asked or self.default).partition(":")
        name = self._named(name)
        serving = self.current.get(name)
        if serving is not None:
            await serving.ready()
            if version in ("", "latest") or serving.tag == f"{name}:{version}":  # latest: what this server serves
                return serving
        loaded = ", ".join(v.tag or v.name for v in self.current.values())
        raise NotFound(f"model {asked!r} is not loaded; this server serves {loaded} (the first is the default)")

    def admit(self, version: Version) -> None:
        version.admitted += 1

    def done(self, version: Version) -> None:
        version.admitted -= 1
        if version.retired and version.admitted == 0:
            self._release(version)

    async def ready(self) -> bool:
        """Every model's generator answers (in process: loaded and checked before this worker took a request)."""
        if self._follower is None:
            self.start_following()
        for version in list(self.current.values()):
            if not await version.generator.ready():
                return False
            await version.ready()
        return True

    async def alive(self) -> bool:
        return all([await v.generator.alive() for v in list(self.current.values())])

    # --- swaps -------------------------------------------------------------------------------------------------

    def _named(self, name: str) -> str:
        """A name as asked: "dcgan" is the default model's too, unless a model has that name."""
        return self.default if name == ALIAS and ALIAS not in self.current else name

    def stored(self, name: str, version: str | None) -> object:
        """The stored model for name[:version] (None: the newest in the store); NotFound with what to do."""
        name = self._named(name)
        if name not in self.current:
            raise NotFound(f"model {name!r} is not one this server serves ({', '.join(self.names)}); its set is DCGAN_MODELS")
        if version is not None and not VERSION.fullmatch(version):
            raise BadRequest(f"version {version[:140]!r} is not a model version: letters, digits, '_', '.' and '-', at most 128")
        tag = f"{name}:{version or 'latest'}"
        try:
            return bentoml.models.get(tag)
        except StoreNotFound:
            raise NotFound(f"the model store has no {tag}: register it first (`python -m contract.store ARTIFACT --name {name}`)") from None

    async def load(self, stored, follow: str | None = None) -> tuple[Version, Version]:
        """Swap `stored`'s name to it: (the old version, the new one). Conflict (one line, old one kept) if it fails.
        `follow`: follow() loads it for a "pin" or a "poll" of the store; the pins are read again once the name's
        lock is held, since an admin route may have swapped and pinned another version while follow() waited."""
        name, tag = stored.tag.name, str(stored.tag)
        async with self._locks[name]:
            old = await self.current[name].ready()
            pin = self._pins.read().get(name) if follow else None
            if (follow == "pin" and pin != tag) or (follow == "poll" and pin is not None):
                return old, old
            if old.tag == tag:
                self._state_changed()
                return old, old
            started = time.monotonic()
            try:
                size = onnx_bytes(stored.path)
                check_size({**self._sizes(except_name=name), tag: size}, self.settings.max_models_mb)
                check_registered(stored)  # the manifest is the one registered
                generator = await asyncio.to_thread(self._make, stored)  # hashes, load, warm-up, golden check
            except Exception as e:  # hashes, limits, ONNX Runtime's own errors, the golden check: one line each
                self._refused[tag] = time.monotonic()
                metrics.MODEL_LOADS.labels(model=name, outcome="refused").inc()
                line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                logger.warning("model %s refused, %s keeps serving: %s", tag, old.tag, line)
                raise Conflict(f"model {tag} refused, {old.tag} keeps serving: {line}") from None
            new = await Version(name, generator, self.settings, size).ready()
            generator.engine.publish()
            self.current[name] = new  # new requests get it from here on; admitted ones keep `old`
            old.retired = True
            self._state_changed()
            metrics.MODEL_LOADS.labels(model=name, outcome="loaded").inc()
            logger.info(
                "model %s now serves %s (loaded and checked in %.2f s); %s is released once its %d admitted request(s) are answered",
                name,
                tag,
                time.monotonic() - started,
                old.tag,
                old.admitted,
            )
            if old.admitted == 0:
                self._release(old)
            return old, new

    def pin(self, name: str, tag: str) -> None:
        """Every worker of this server serves `tag` for `name` from its next look at the pins (follow())."""
        self._pins.pin(name, tag)

    async def everywhere(self, name: str, tag: str) -> tuple[int, int]:
        """Wait (up to WORKERS_WAIT_S) until every entry worker of this server serves `tag` for `name`: (workers that
        do, workers). Each worker states what it serves in a file of its own (service/drain.py's folder)."""
        deadline = time.monotonic() + WORKERS_WAIT_S
        while True:
            states = serving_states()
            done = sum(1 for state in states if state.get(name) == tag)
            if done == len(states) or time.monotonic() >= deadline:
                return done, len(states)
            await asyncio.sleep(FOLLOW_S / 2)

    def _state_changed(self) -> None:
        write_serving_state({name: v.tag or name for name, v in self.current.items()})

    def _sizes(self, except_name: str) -> dict[str, int]:
        return {v.tag or v.name: v.onnx_bytes for v in self.current.values() if v.name != except_name}

    def _release(self, version: Version) -> None:
        version.generator.close()
        serving = self.current.get(version.name)
        if serving is not None and serving is not version and serving.tag == version.tag:  # swapped back to it meanwhile
            serving.generator.engine.publish()  # its dcgan_generator_info series is this one's: 1 again
        logger.info("model %s released", version.tag)

    # --- following the pins and the store ------------------------------------------------------------------------

    def start_following(self) -> None:
        """Run follow() in this worker's loop when there is anything to follow."""
        self._state_changed()
        wanted = self.settings.model_poll_s or (self.settings.api_key and self.settings.workers > 1)
        self._follower = asyncio.get_running_loop().create_task(self._follow()) if wanted else False

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self.follow_once()
            except Exception:
                logger.exception("following the model store failed; retrying in %.0f s", FOLLOW_S)

    async def follow_once(self) -> None:
        poll = self.settings.model_poll_s and time.monotonic() - self._polled_at >= self.settings.model_poll_s
        if poll:
            self._polled_at = time.monotonic()
        for name, spec in zip(self.names, self.settings.models, strict=True):
            want = self._pins.read().get(name)  # read again for each name: a load of the one before may have taken a while
            why = "pin" if want is not None else "poll"
            if want is None and poll and spec.partition(":")[2] in ("", "latest"):
                want = await asyncio.to_thread(_latest, name)
            serving = self.current[name]
            refused_at = self._refused.get(want)
            if want is None or want == serving.tag or (refused_at is not None and time.monotonic() - refused_at < REFUSED_RETRY_S):
                continue
            try:
                await self.load(bentoml.models.get(want), follow=why)
            except (Conflict, StoreNotFound, BentoMLException) as e:
                self._refused[want] = time.monotonic()
                logger.warning("following %s: %s", name, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _latest(name: str) -> str | None:
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except StoreNotFound:
        return None


def write_serving_state(serving: dict[str, str]) -> None:
    """This worker's {name: tag}, for the admin route of any worker to read (removed when the worker exits)."""
    path = server_dir("models") / f"worker-{os.getpid()}.json"
    part = path.with_suffix(".part")
    part.write_text(json.dumps(serving))
    part.replace(path)
    if path not in _STATES_WRITTEN:
        _STATES_WRITTEN.add(path)
        atexit.register(path.unlink, missing_ok=True)


_STATES_WRITTEN: set[Path] = set()


def serving_states() -> list[dict[str, str]]:
    """What each live entry worker of this server serves."""
    states = []
    for path in server_dir("models").glob("worker-*.json"):
        pid = path.stem.removeprefix("worker-")
        if not pid.isdigit() or not child_of_server(int(pid)):
            path.unlink(missing_ok=True)  # a worker that died without its atexit (or a stray file)
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            states.append(state)
    return states


class PinsFile:
    """The versions the admin route pinned, shared by the workers of one `bentoml serve` run (service/server_dir.py)
    in the pod's writable /tmp: {name: tag}, replaced atomically (a new file each time: its inode tells a change even
    where timestamps are coarse), updated under a lock so that two workers pinning at once both count."""

    def __init__(self) -> None:
        self.path = server_dir("models") / "pins.json"
        self._seen: tuple[tuple[int, int], dict] = ((-1, -1), {})

    def read(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        if (stat.st_ino, stat.st_mtime_ns) != self._seen[0]:
            try:
                pins = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return dict(self._seen[1])
            self._seen = ((stat.st_ino, stat.st_mtime_ns), pins if isinstance(pins, dict) else {})
        return dict(self._seen[1])

    def pin(self, name: str, tag: str) -> None:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pins = {**self.read(), name: tag}
            part = self.path.with_suffix(f".{os.getpid()}.part")
            part.write_text(json.dumps(pins))
            part.replace(self.path)
