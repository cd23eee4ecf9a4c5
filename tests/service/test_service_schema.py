"""Schemathesis against the service's own OpenAPI spec (/docs.json): valid and invalid requests, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error


# schemathesis.pytest.from_fixture() breaks on pytest 9 (it reads Function._nodeid), so the
# strategy is driven by hypothesis directly, with the spec fetched from the running server.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_from_the_spec_gets_a_server_error(service_url, mode):
    schema = schemathesis.openapi.from_url(f"{service_url}/docs.json")

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(checks=[not_a_server_error])

    check()
