"""The Flask app in-process (no servers): routing, error mapping and downloads."""

import pytest
from pydantic import SecretStr

from app import create_app
from app.services import services
from app.settings import Settings


@pytest.fixture(scope="module")
def client(settings):
    return create_app(settings).test_client()


def test_health_and_ready(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_models(client):
    body = client.get("/v1/models").json
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [
        "write_tutorial",
        "write_teaching_plan",
    ]
    assert client.get("/v1/models/write_tutorial").json["object"] == "model"
    assert client.get("/v1/models/x").status_code == 404


def test_download_served_by_app(client, settings):
    from app.storage import FileStore

    store = FileStore(settings.tutorials_path)
    name = store.new_name("Café guide")
    store.write(name, "# Café\n".encode())
    r = client.get(f"/download/{name}")
    assert r.status_code == 200 and r.data == "# Café\n".encode()
    assert r.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["/download/../secret", "/download/%2e%2e/secret", "/download/.x.tmp", "/download/"]
)
def test_download_refuses(client, path):
    assert client.get(path).status_code == 404


def test_unexpected_errors_are_openai_500(settings):
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    r = app.test_client().get("/boom")
    assert r.status_code == 500
    assert r.json["error"]["type"] == "server_error" and "secret" not in r.json["error"]["message"]


def test_draining_turns_readiness_off_and_refuses_new_work(settings):
    app = create_app(settings)
    client = app.test_client()
    services(app).lifecycle.drain(deadline_seconds=3600)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json == {"status": "draining"}
    r = client.post(
        "/v1/chat/completions",
        json={"model": "write_tutorial", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 503 and r.json["error"]["code"] == "server_shutting_down"
    assert r.headers["x-should-retry"] == "true"  # no work had started
    assert client.get("/healthz").status_code == 200  # alive while draining


def test_admission_limit_answers_429_before_any_work(settings):
    app = create_app(settings)
    lifecycle = services(app).lifecycle
    held = [lifecycle.admit() for _ in range(lifecycle.max_generations)]
    r = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "write_tutorial", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 429 and r.json["error"]["type"] == "rate_limit_error"
    assert r.headers["Retry-After"]
    for admission in held:
        admission.release()
        admission.release()  # once only
    assert lifecycle.held == 0


def test_metagpt_actions_are_built_without_rereading_the_config(settings, monkeypatch):
    """MetaGPT's Action validator calls `ModelsConfig.default()`, which reads and parses the config
    files each time (0.2 ms per Action, several per request): the app parses them once per process."""
    create_app(settings)
    from metagpt.actions.write_tutorial import WriteContent, WriteDirectory
    from metagpt.configs.models_config import ModelsConfig

    WriteDirectory()
    reads = []

    def read_yaml(cls, path, encoding="utf-8"):
        reads.append(path)
        return {}

    monkeypatch.setattr(ModelsConfig, "read_yaml", classmethod(read_yaml))
    action = WriteContent(directory={"Intro": ["What it is"]}, language="English")
    WriteDirectory()
    assert reads == []
    assert action.llm is not None  # MetaGPT's own LLM of the context: the config2.yaml's `llm:` placeholder


def test_each_request_gets_a_fresh_metagpt_context(settings):
    """`Runtime.context` builds what pydantic's defaults would (an empty `kwargs`, a cost manager with
    MetaGPT's prices), without deep-copying them, and shares nothing mutable between requests."""
    runtime = services(create_app(settings)).runtime
    from metagpt.context import Context
    from metagpt.utils.cost_manager import CostManager

    first, second = runtime.context(), runtime.context()
    default = Context(config=runtime.config, cost_manager=CostManager())
    for context in (first, second):
        assert context.config is runtime.config
        assert context.kwargs.model_dump() == default.kwargs.model_dump() == {}
        assert context.cost_manager.model_dump() == default.cost_manager.model_dump()
    assert first.kwargs is not second.kwargs and first.cost_manager is not second.cost_manager
    assert first.cost_manager.token_costs is not second.cost_manager.token_costs
    first.kwargs.set("project_path", "/elsewhere")
    first.cost_manager.update_cost(10, 5, "gpt-4o")
    assert second.kwargs.get("project_path") is None and second.cost_manager.total_prompt_tokens == 0
    assert second.cost_manager.total_cost == 0 and first.cost_manager.total_cost > 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Proto": "javascript"},  # was a javascript:// link
        {"X-Forwarded-Port": "x"},  # was http:/download/...
        {"X-Forwarded-Host": "evil.example/path"},
        {"Host": "a b"},
    ],
)
def test_a_link_is_never_built_from_a_bad_scheme_or_host(client, headers):
    r = client.post(
        "/v1/chat/completions",
        json={"model": "write_tutorial", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert r.status_code == 400, r.json
    assert r.json["error"]["type"] == "invalid_request_error"
    assert "GATEWAY_PUBLIC_BASE_URL" in r.json["error"]["message"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://example.com", "example.com", "https://x/?q=1"])
def test_public_base_url_must_be_an_http_url(settings, url):
    with pytest.raises(ValueError, match="http or https URL"):
        Settings(data_dir=settings.data_dir, public_base_url=url)


def test_serving_without_api_keys_logs_a_warning_at_start(settings, caplog):
    with caplog.at_level("WARNING", logger="app.api.auth"):
        create_app(settings)
    assert "No API keys configured" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.api.auth"):
        create_app(settings.model_copy(update={"api_keys": SecretStr("k1")}))
    assert "No API keys configured" not in caplog.text


def test_every_models_series_exists_at_zero_from_the_start(settings):
    text = services(create_app(settings)).metrics.render()[0].decode()
    for model in ("write_tutorial", "write_teaching_plan", "housekeeping"):
        assert f'gateway_streamed_bytes_total{{model="{model}"}} 0.0' in text
        assert f'gateway_generation_duration_seconds_count{{model="{model}",outcome="failed"}} 0.0' in text
        assert f'gateway_streamed_tokens_total{{kind="content",model="{model}"}} 0.0' in text
    assert 'gateway_llm_requests_total{outcome="failed"} 0.0' in text


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GATEWAY_LLM_API_KEY", "sk-1\r\nX-Injected: yes", "line break"),
        ("GATEWAY_LLM_API_KEY", "clé-ключ", "Latin-1"),
        ("GATEWAY_LLM_BASE_URL", "https://user:pass@llm.example/v1", "user name or password"),
        ("GATEWAY_LLM_BASE_URL", "llm.example/v1", "http(s) URL"),
        ("GATEWAY_MAX_GENERATIONS_PER_WORKER", "many", "valid integer"),
        # nginx reads the keys too (per-key limits): a quote or `$` would break or change its config
        ("GATEWAY_API_KEYS", 'good-key,bad"key', "bearer token"),
        ("GATEWAY_API_KEYS", "sk-$host", "bearer token"),
    ],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(monkeypatch, capsys, variable, value, says):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as info:
        Settings.load()
    assert info.value.code == 3  # gunicorn: the worker failed to boot, do not restart it
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("invalid configuration: ") and variable in line and says in line


def test_a_crlf_env_files_trailing_return_is_not_sent(monkeypatch):
    monkeypatch.setenv("GATEWAY_LLM_API_KEY", "sk-1\r")
    assert Settings.load().llm_api_key.get_secret_value() == "sk-1"
