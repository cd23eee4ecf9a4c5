"""docs/serving.md lists exactly the service's generation routes and settings, as their one declaration makes them."""

from __future__ import annotations

import re

from common.paths import REPO_ROOT
from service.routes import ROUTES
from service.routes import markdown_table as routes_table
from service.settings import SETTINGS_TABLE, ServiceSettings
from service.settings import markdown_table as settings_table

SERVING = REPO_ROOT / "docs" / "serving.md"


def test_the_docs_route_table_is_the_route_table():
    page = SERVING.read_text()
    assert routes_table() in page, "regenerate it: python -m service.routes"
    listed = re.findall(r"^\| `(/[^`]+)` \|", page, re.M)
    assert [path for path in listed if path in ROUTES or path.startswith(("/sample", "/interpolate"))] == list(ROUTES)


def test_the_docs_settings_table_is_the_settings_table():
    page = SERVING.read_text()
    assert settings_table() in page, "regenerate it: python -m service.settings"
    documented = set(re.findall(r"^\| `(DCGAN_[A-Z0-9_]+)` \|", page, re.M))
    assert documented == {s.env for s in SETTINGS_TABLE}


def test_every_setting_is_read_from_its_variable_with_its_bounds():
    defaults = ServiceSettings.from_env({})
    assert defaults.workers == 1 and defaults.generator_calls == 1 and defaults.ort_threads >= 1
    assert ServiceSettings.from_env({"DCGAN_GENERATOR": "service"}).generator_calls == 2
    assert ServiceSettings.from_env({"DCGAN_WORKERS": "2", "DCGAN_ORT_THREADS": "3"}).ort_threads == 3
    public = ServiceSettings.from_env({"DCGAN_API_KEY": "secret"}).public()
    assert public["DCGAN_API_KEY"] is True and "secret" not in str(public)
    assert list(public) == [s.env for s in SETTINGS_TABLE]


def test_a_bad_value_is_one_line_naming_the_variable():
    import pytest
    from bentoml.exceptions import BentoMLConfigException

    for env, why in [
        ({"DCGAN_MAX_N": "ten"}, "is not an integer"),
        ({"DCGAN_WORKERS": "0"}, "must be >= 1"),
        ({"DCGAN_LOG_FORMAT": "xml"}, "must be one of: text, json"),
        ({"DCGAN_ACCESS_LOG": "maybe"}, "must be 1/true/yes or 0/false/no"),
    ]:
        with pytest.raises(BentoMLConfigException) as raised:
            ServiceSettings.from_env(env)
        assert next(iter(env)) in str(raised.value) and why in str(raised.value) and "\n" not in str(raised.value)


def test_the_model_set_is_read_from_dcgan_models_or_dcgan_model():
    import pytest
    from bentoml.exceptions import BentoMLConfigException

    assert ServiceSettings.from_env({}).models == ("dcgan-generator:latest",)
    assert ServiceSettings.from_env({"DCGAN_MODEL": "dcgan-generator:abc"}).models == ("dcgan-generator:abc",)
    both = ServiceSettings.from_env({"DCGAN_MODELS": "dcgan-generator, faces:v1"})
    assert both.models == ("dcgan-generator", "faces:v1") and both.public()["DCGAN_MODELS"] == "dcgan-generator,faces:v1"
    for env, why in [
        ({"DCGAN_MODELS": "a,b", "DCGAN_MODEL": "c"}, "set DCGAN_MODELS or DCGAN_MODEL, not both"),
        ({"DCGAN_MODELS": "a,,b"}, "'' is not a model tag"),
        ({"DCGAN_MODELS": "Faces"}, "'Faces' is not a model tag"),
        ({"DCGAN_MODELS": "a,a:v2"}, "each name at most once"),
        ({"DCGAN_MODELS": "a,b,c", "DCGAN_MAX_MODELS": "2"}, "more than DCGAN_MAX_MODELS=2"),
        ({"DCGAN_MODELS": "a,b", "DCGAN_GENERATOR": "service"}, "DCGAN_GENERATOR=service serves one model"),
        ({"DCGAN_MODEL_POLL_S": "5", "DCGAN_GENERATOR": "service"}, "DCGAN_MODEL_POLL_S needs DCGAN_GENERATOR=inprocess"),
    ]:
        with pytest.raises(BentoMLConfigException) as raised:
            ServiceSettings.from_env(env)
        assert why in str(raised.value) and "\n" not in str(raised.value), raised.value
