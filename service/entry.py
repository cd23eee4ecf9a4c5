"""The entry service `svc` ("dcgan"): the BentoML declaration. The requests themselves are answered by service/api.py.

    routes       the generation routes of service/routes.py (POST, GET, HEAD), /v2/models/{name}/infer, /info,
                 /metrics, the page at /ui/, /docs: all in `API`, mounted at "/" (BentoML's public asgi_app)
    probes       /readyz and /livez: BentoML's, answered by __is_ready__ and __is_alive__ below
    the models   `MODELS` (DCGAN_MODELS, service/generator.py), packed into the bento; checked once before any
                 worker starts, within DCGAN_MAX_MODELS and DCGAN_MAX_MODELS_MB
    wiring       DCGAN_GENERATOR=inprocess (default): each entry worker loads every model itself, each in its own
                 ONNX Runtime session (service/model_set.py), and can swap versions; =service: the entry workers call
                 the generator service (service/generator.py), which BentoML batches, for one model

BentoML's own per-request layers are off or unused: the service declares no @bentoml.api (the mounted app answers
every route), the generation routes reach it ahead of BentoML's middleware stack (service/bentoml_fixes.py, 6),
BentoML's HTTP metrics are off (they label each request with its raw path; service/metrics.py's are bounded and
served at /metrics), and so are its access log and tracing unless DCGAN_TRACING=1.
"""

from __future__ import annotations

import logging

import bentoml

from service import bentoml_fixes
from service.api import Api
from service.drain import DRAIN, install_entry_drain
from service.gc_freeze import freeze_startup_heap
from service.generator import MODELS, GeneratorService
from service.generators import InProcess, Remote
from service.logs import name_requests_in_logs, use_json_lines
from service.model_engine import Engine
from service.model_set import ModelSet, check_size, onnx_bytes
from service.preflight import check_stored_model
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
API = Api(SETTINGS)
# Every workaround of BentoML behaviour, checked against the installed BentoML; the generation routes go to API first.
bentoml_fixes.install(SETTINGS, entry=("dcgan", API, API.generation_paths))


class EntryService:
    if not SETTINGS.in_process:
        generator = bentoml.depends(GeneratorService)

    @bentoml.on_deployment
    def check_artifact() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a bad model, or a set past the limits,
        stops start-up here."""
        stored = [model.resolve() for model in MODELS]
        check_size({str(s.tag): onnx_bytes(s.path) for s in stored}, SETTINGS.max_models_mb)
        for model in stored:
            logger.info("start-up check: %s", check_stored_model(model))  # service/preflight.py

    def __init__(self) -> None:
        if SETTINGS.log_format == "json":
            use_json_lines()
        name_requests_in_logs()
        if SETTINGS.in_process:
            generators, sizes = {}, {}
            for i in range(len(MODELS)):
                stored = getattr(self, f"model_{i}")
                engine = Engine(stored)
                engine.publish()
                # the limit counts the float32 file (as the start-up check and a swap do), whichever file serves
                generators[engine.name], sizes[engine.name] = self.in_process(engine), onnx_bytes(stored.path)
                logger.info("%s, in the entry worker", engine.loaded_line())
        else:
            name = MODELS[0].tag.name
            generators, sizes = {name: Remote(self.generator, SETTINGS.generator_restart_wait_s)}, {name: 0}
        self.models = ModelSet(SETTINGS, generators, sizes, make=lambda stored: self.in_process(Engine(stored)))
        API.attach(self.models)
        # Runs in the worker's event loop (BentoML builds the instance at its start-up): every worker follows the
        # admin route's pins and the store, whether or not a request or probe reaches it.
        self.models.start_following()
        install_entry_drain(SETTINGS.drain_timeout_s)  # SIGTERM: refuse new work, finish the admitted, then stop
        freeze_startup_heap()

    @staticmethod
    def in_process(engine: Engine) -> InProcess:
        return InProcess(engine, SETTINGS.generator_calls, {"max_batch_size": SETTINGS.max_batch_size})

    async def __is_ready__(self) -> bool:
        """Ready while every model's generator answers (loaded, warmed up, golden-checked); not while draining."""
        return not DRAIN.draining and await API.ready()

    async def __is_alive__(self) -> bool:
        """Alive unless the generator service has not answered for longer than DCGAN_GENERATOR_RESTART_WAIT_S."""
        return await API.alive()


# In process, each served model is a class attribute of the entry, so that BentoML resolves it at start-up and
# `bentoml build` packs it (with a generator service, that service declares its one model).
for _i, _model in enumerate(MODELS if SETTINGS.in_process else ()):
    setattr(EntryService, f"model_{_i}", _model)

EntryService = bentoml.service(
    name="dcgan",
    workers=SETTINGS.workers,
    traffic={"timeout": 40},  # above the generator's 30 s, so a stuck call surfaces as its error, not ours
    metrics={"enabled": False},  # service/metrics.py instead
    logging={"access": {"enabled": False}},  # service/logs.py writes the access lines (DCGAN_ACCESS_LOG)
    # OpenTelemetry's middleware does nothing for an excluded URL; "." matches every one.
    **({} if SETTINGS.tracing else {"tracing": {"excluded_urls": ["."]}}),
)(bentoml.asgi_app(API, path="/")(EntryService))

svc = EntryService
