"""Schemathesis against the OpenAPI document, on the running server: no 5xx, no hang, only OpenAI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import DataGenerationMethod
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection

OPENAPI = Path(__file__).resolve().parents[2] / "app" / "api" / "openapi.yaml"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(stack):
    return schemathesis.from_path(
        str(OPENAPI),
        base_url=stack.url,
        data_generation_methods=[DataGenerationMethod.positive, DataGenerationMethod.negative],
    )


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_fuzz(case):
    response = case.call(timeout=20)  # a hang fails here
    assert response.status_code < 500, (case.path, case.body, response.text[:500])
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), (
            case.method,
            case.path,
            case.headers,
            case.body,
            response.status_code,
            response.text[:300],
        )
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    # Keys are optional (off in this stack): an unauthenticated 200 is right here, and schemathesis
    # counts a missing key as "negative data". Invalid bodies are checked below instead.
    case.validate_response(response, excluded_checks=(ignored_auth, negative_data_rejection))
    if case.method == "POST" and case.data_generation_method == DataGenerationMethod.negative:
        assert 400 <= response.status_code < 500, (case.body, response.status_code, response.text[:300])
