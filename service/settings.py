"""Service settings: each declared once (environment variable, default, bounds, one-line doc), read once at start-up.

BentoML's decorators need them at class definition, so they are read when this module is imported. Every
setting has a default that serves the committed model on a 2-core CPU box; a deployment changes them with
environment variables, never by editing code. `SETTINGS_TABLE` is the one declaration: `ServiceSettings` is
built from it in one loop, /info reports it, and docs/serving.md's table is generated from it
(`python -m service.settings` prints that table; a test checks the page matches).

A value that is not an integer, below its minimum, or not one of a setting's choices stops start-up with
one line (BentoMLConfigException, which `bentoml serve` prints without a traceback).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bentoml.exceptions import BentoMLConfigException

from common.paths import REPO_ROOT
from contract.artifact import MODEL_NAME

GENERATOR_MODES = ("inprocess", "service")  # DCGAN_GENERATOR; the first is the default
LOG_FORMATS = ("text", "json")  # DCGAN_LOG_FORMAT; the first is the default
MAX_SEED = 2**63 - 1  # the signed 64-bit range: a seed any int64-typed client (Go, Java, numpy) can send


def available_cores() -> int:
    """The cores this process may run on (a container's cpuset), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Setting:
    """One setting. `default` is a value, or a function of the settings read before it (in table order)."""

    env: str  # the environment variable
    name: str  # the ServiceSettings field
    kind: str  # "int", "bool", "str", "path" or "choice"
    default: Any
    doc: str  # one line for the docs table
    low: int | None = None  # ints: the smallest value allowed
    choices: tuple[str, ...] = ()  # choices: the allowed values, the first being the default
    default_doc: str | None = None  # how the docs table shows a computed default
    secret: bool = False  # never shown by /info or repr

    def read(self, environ: dict[str, str], before: dict[str, Any]) -> Any:
        raw = environ.get(self.env, "").strip()
        if raw == "":
            return self.default(before) if callable(self.default) else self.default
        if self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise BentoMLConfigException(f"environment variable {self.env}={raw!r} is not an integer") from None
            if self.low is not None and value < self.low:
                raise BentoMLConfigException(f"environment variable {self.env}={value} must be >= {self.low}")
            return value
        if self.kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise BentoMLConfigException(f"environment variable {self.env}={raw!r} must be 1/true/yes or 0/false/no")
            return raw.lower() in ("1", "true", "yes")
        if self.kind == "choice":
            if raw.lower() not in self.choices:
                raise BentoMLConfigException(f"environment variable {self.env}={raw!r} must be one of: {', '.join(self.choices)}")
            return raw.lower()
        return Path(raw) if self.kind == "path" else raw

    def shown_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.kind == "bool":
            return "1" if self.default else "0"
        return f"`{self.default}`" if self.kind in ("str", "choice") else str(self.default)


def _calls_default(before: dict[str, Any]) -> int:
    # One ONNX Runtime call at a time in process uses every core (the queue behind it forms the next batch); two
    # with a generator service, so one call's round trip overlaps the other's inference.
    return 1 if before["generator"] == "inprocess" else 2


SETTINGS_TABLE: tuple[Setting, ...] = (
    Setting("DCGAN_MODEL", "model_tag", "str", f"{MODEL_NAME}:latest", "which stored model to serve (a set of one; see `DCGAN_MODELS`)"),
    Setting(
        "DCGAN_MODELS",
        "model_list",
        "str",
        "",
        "the served models: comma-separated tags, or names meaning their latest version; the first is the default "
        "(set this or `DCGAN_MODEL`)",
        default_doc="`DCGAN_MODEL`",
    ),
    Setting(
        "DCGAN_MODEL_POLL_S",
        "model_poll_s",
        "int",
        0,
        "seconds between looks at the store: each name given without a version follows its latest version (0: off)",
        low=0,
    ),
    Setting("DCGAN_MAX_MODELS", "max_models", "int", 4, "most models loaded at once; more stops start-up", low=1),
    Setting(
        "DCGAN_MAX_MODELS_MB",
        "max_models_mb",
        "int",
        1024,
        "most MiB of ONNX files loaded at once, all models together; past it, start-up or a load is refused",
        low=1,
    ),
    Setting(
        "DCGAN_DEFAULT_ARTIFACT",
        "default_artifact",
        "path",
        REPO_ROOT / "artifacts" / "default",
        "what is registered when the store has no generator",
        default_doc="`artifacts/default`",
    ),
    Setting("DCGAN_MAX_N", "max_n", "int", 64, "most images per request", low=1),
    Setting(
        "DCGAN_MAX_BATCH",
        "max_batch_size",
        "int",
        128,
        "most images per merged call and per ONNX Runtime call; 1 turns batching off",
        low=1,
    ),
    Setting(
        "DCGAN_GENERATOR",
        "generator",
        "choice",
        GENERATOR_MODES[0],
        "where the model runs: `inprocess` (in each entry worker) or `service` (a generator service of its own; the GPU overlay's choice)",
        choices=GENERATOR_MODES,
    ),
    Setting(
        "DCGAN_WORKERS",
        "workers",
        "int",
        1,
        "entry worker processes (BentoML's `workers` of the entry service); ONNX Runtime's threads are divided among them",
        low=1,
    ),
    Setting(
        "DCGAN_GENERATOR_CALLS",
        "generator_calls",
        "int",
        _calls_default,
        "generator calls an entry worker keeps in flight; requests arriving while they are busy are merged into the next one",
        low=1,
        default_doc="1 in process, 2 as a service",
    ),
    Setting(
        "DCGAN_ORT_THREADS",
        "ort_threads",
        "int",
        lambda before: max(1, available_cores() // before["workers"]),
        "ONNX Runtime intra-op threads on CPU, per process that runs the model",
        low=1,
        default_doc="available cores / `DCGAN_WORKERS`",
    ),
    Setting(
        "DCGAN_MAX_LATENCY_MS",
        "max_latency_ms",
        "int",
        5000,
        "`service` only: the generator's queueing budget; past it, 503",
        low=1,
    ),
    Setting(
        "DCGAN_MAX_BATCH_WAIT_MS",
        "max_batch_wait_ms",
        "int",
        0,
        "`service` only: longest an idle generator holds a batch open for more requests (0: a batch is what queued meanwhile)",
        low=0,
    ),
    Setting(
        "DCGAN_MAX_INFLIGHT", "max_inflight", "int", 256, "generation requests in progress per model and entry worker; past it, 429", low=1
    ),
    Setting(
        "DCGAN_DEADLINE_MS",
        "deadline_ms",
        "int",
        2000,
        "a request whose images cannot be done within this is refused at once (503 + `Retry-After`)",
        low=1,
    ),
    Setting(
        "DCGAN_MAX_QUEUED_IMAGES",
        "max_queued_images",
        "int",
        1024,
        "images waiting for the generator per model and entry worker; past it, 503",
        low=1,
    ),
    Setting(
        "DCGAN_DRAIN_TIMEOUT_S",
        "drain_timeout_s",
        "int",
        15,
        "on SIGTERM, the longest wait for admitted requests before exiting (preStop 5 s + 15 + shutdown < Kubernetes' 30 s)",
        low=0,
    ),
    Setting("DCGAN_BODY_TIMEOUT_S", "body_timeout_s", "int", 5, "a request body must arrive within this; else 408", low=1),
    Setting(
        "DCGAN_GENERATOR_RESTART_WAIT_S",
        "generator_restart_wait_s",
        "int",
        25,
        "how long a call keeps retrying an unreachable generator service, and how long it may not answer before `/livez` turns 503",
        low=0,
    ),
    Setting(
        "DCGAN_API_KEY",
        "api_key",
        "str",
        "",
        "when set, the generation routes and `/info` want `Authorization: Bearer <key>`",
        default_doc="unset",
        secret=True,
    ),
    Setting(
        "DCGAN_REQUIRE_CUDA", "require_cuda", "bool", False, "1: start-up fails unless ONNX Runtime runs on CUDA (the GPU overlay sets it)"
    ),
    Setting(
        "DCGAN_ACCESS_LOG",
        "access_log",
        "bool",
        False,
        "1: one access line per request (route, status, duration, model, refusal reason, request id)",
    ),
    Setting(
        "DCGAN_LOG_FORMAT",
        "log_format",
        "choice",
        LOG_FORMATS[0],
        "`json`: every log line of the service is one JSON object (for log pipelines); `text`: plain lines",
        choices=LOG_FORMATS,
    ),
    Setting(
        "DCGAN_TRACING",
        "tracing",
        "bool",
        False,
        "1: OpenTelemetry spans (configure an exporter in BentoML's configuration); off, the tracing middleware skips every URL",
    ),
)


@dataclass(frozen=True)
class ServiceSettings:
    model_tag: str
    model_list: str
    model_poll_s: int
    max_models: int
    max_models_mb: int
    default_artifact: Path
    max_n: int
    max_batch_size: int
    generator: str
    workers: int
    generator_calls: int
    ort_threads: int
    max_latency_ms: int
    max_batch_wait_ms: int
    max_inflight: int
    deadline_ms: int
    max_queued_images: int
    drain_timeout_s: int
    body_timeout_s: int
    generator_restart_wait_s: int
    api_key: str = field(repr=False)
    require_cuda: bool
    access_log: bool
    log_format: str
    tracing: bool
    models: tuple[str, ...] = ()  # the served models' tags as given ("name" or "name:version"), the default first

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS_TABLE:
            values[setting.name] = setting.read(environ, values)
        if values["model_list"] and environ.get("DCGAN_MODEL", "").strip():
            raise BentoMLConfigException("set DCGAN_MODELS or DCGAN_MODEL, not both (DCGAN_MODEL is a set of one)")
        settings = cls(**values)
        return dataclasses.replace(settings, models=model_specs(settings))

    @property
    def in_process(self) -> bool:
        return self.generator == "inprocess"

    def public(self) -> dict[str, Any]:
        """Every setting by its environment variable, as /info shows them (the API key only as whether one is set)."""
        shown = {}
        for setting in SETTINGS_TABLE:
            value = getattr(self, setting.name)
            if setting.name == "model_list":
                value = ",".join(self.models)
            shown[setting.env] = bool(value) if setting.secret else str(value) if isinstance(value, Path) else value
        return shown


MODEL_TAG = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[A-Za-z0-9_.-]+)?")  # BentoML's tag rule, name[:version]


def model_specs(settings: ServiceSettings) -> tuple[str, ...]:
    """DCGAN_MODELS (or DCGAN_MODEL, a set of one) checked: valid tags, one per name, within DCGAN_MAX_MODELS, and one
    model only with a generator service. BentoMLConfigException (one line) otherwise."""
    given = settings.model_list or settings.model_tag
    specs = tuple(part.strip() for part in given.split(","))
    env = "DCGAN_MODELS" if settings.model_list else "DCGAN_MODEL"
    for spec in specs:
        if not MODEL_TAG.fullmatch(spec):
            raise BentoMLConfigException(
                f"{env}: {spec!r} is not a model tag; give name or name:version, names in lowercase letters, digits, '.', '_', '-'"
            )
    names = [spec.split(":")[0] for spec in specs]
    if len(set(names)) != len(names):
        raise BentoMLConfigException(f"{env}={given}: each name at most once (one version of a name serves at a time)")
    if len(specs) > settings.max_models:
        raise BentoMLConfigException(f"{env} names {len(specs)} models, more than DCGAN_MAX_MODELS={settings.max_models}")
    if len(specs) > 1 and not settings.in_process:
        raise BentoMLConfigException("DCGAN_GENERATOR=service serves one model: serve several with DCGAN_GENERATOR=inprocess")
    if settings.model_poll_s and not settings.in_process:
        raise BentoMLConfigException("DCGAN_MODEL_POLL_S needs DCGAN_GENERATOR=inprocess (a generator service does not swap versions)")
    return specs


def markdown_table() -> str:
    """docs/serving.md's settings table, from SETTINGS_TABLE."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {s.shown_default()} | {s.doc} |" for s in SETTINGS_TABLE]
    return "\n".join(rows)


SETTINGS = ServiceSettings.from_env()

if __name__ == "__main__":
    print(markdown_table())
