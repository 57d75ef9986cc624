"""Settings of each service and of the local stack, read from a given environment."""

from __future__ import annotations

import pytest

from emulators.localrun import DEV_API_KEYS, DEV_WEBHOOK_SECRETS, StackConfig
from ingress.settings import MAX_BODY_BYTES, ConfigError, Settings
from schemas.webhooks import SigningSecrets
from worker.settings import ConfigError as WorkerConfigError
from worker.settings import WorkerSettings


def test_ingress_defaults() -> None:
    settings = Settings.from_env({"API_KEYS": "dev:k"})
    assert settings.project == "omni-local" and settings.jobs_topic == "jobs"
    assert settings.max_body_bytes == MAX_BODY_BYTES == 1024 * 1024
    assert settings.publish_timeout_s > 0 and settings.retry_after_s > 0


def test_ingress_reads_every_variable() -> None:
    env = {
        "API_KEYS_FILE": "/keys",
        "GOOGLE_CLOUD_PROJECT": "p",
        "JOBS_TOPIC": "t",
        "MAX_BODY_BYTES": "2048",
        "PUBLISH_TIMEOUT_S": "1.5",
        "LOG_LEVEL": "debug",
    }
    settings = Settings.from_env(env)
    assert (settings.project, settings.jobs_topic, settings.api_keys_file) == ("p", "t", "/keys")
    assert settings.max_body_bytes == 2048 and settings.publish_timeout_s == 1.5
    assert settings.log_level == "DEBUG"


def test_ingress_needs_a_key_source() -> None:
    with pytest.raises(ConfigError, match="API_KEYS"):
        Settings.from_env({})


def test_ingress_rejects_bad_numbers() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"API_KEYS": "dev:k", "MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigError):
        Settings.from_env({"API_KEYS": "dev:k", "MAX_BODY_BYTES": "0"})


def test_ingress_settings_never_show_keys() -> None:
    assert "super-secret" not in repr(Settings.from_env({"API_KEYS": "dev:super-secret"}))


def test_worker_defaults_and_variables() -> None:
    default = WorkerSettings.from_env({})
    assert default.subscription_prefix == "worker" and default.http_port == 8090
    assert default.device == "auto" and default.torch_threads >= 1
    assert default.served_tasks() == ("embed", "similar", "entities", "forecast", "predict")
    assert default.batch_policy("embed") == (32, 0.005) and default.batch_policy("forecast")[0] == 1
    # Flow control lets in one batch running and one gathering.
    assert default.leased_messages("embed") == 128 and default.leased_messages("forecast") == 8
    # A chunk subscription: one chunk running and the next claimed.
    assert default.chunk_messages == 2
    assert default.lease_extension_s <= 30
    assert (default.predict_max_loaded, default.predict_miss_cache_s) == (4, 5.0)
    custom = WorkerSettings.from_env(
        {
            "WORKER_HTTP_PORT": "9001",
            "WORKER_DEVICE": "CPU",
            "TORCH_THREADS": "3",
            "JOBS_SUBSCRIPTION_PREFIX": "s",
            "WORKER_TASKS": "forecast, embed,forecast",
            "WORKER_MAX_BATCH_EMBED": "64",
            "WORKER_MAX_WAIT_MS_ENTITIES": "20",
            "WORKER_MAX_MESSAGES": "10",
            "WORKER_CHUNK_MESSAGES": "3",
            "PREDICT_MAX_LOADED": "2",
            "PREDICT_MISS_CACHE_S": "0",
        }
    )
    assert (custom.http_port, custom.device, custom.torch_threads, custom.subscription_prefix) == (
        9001,
        "cpu",
        3,
        "s",
    )
    assert custom.served_tasks() == ("forecast", "embed")
    assert custom.batch_policy("embed") == (64, 0.005)
    assert custom.batch_policy("entities") == (32, 0.02)
    assert custom.leased_messages("embed") == 10 and custom.chunk_messages == 3
    assert (custom.predict_max_loaded, custom.predict_miss_cache_s) == (2, 0.0)


@pytest.mark.parametrize(
    "env",
    [
        {"WORKER_DEVICE": "tpu"},
        {"WORKER_HTTP_PORT": "x"},
        {"WORKER_HTTP_PORT": "70000"},
        {"WORKER_TASKS": "embed,paint"},
        {"WORKER_MAX_BATCH_EMBED": "0"},
        {"WORKER_MAX_BATCH_EMBED": "501"},
        {"WORKER_MAX_WAIT_MS_EMBED": "x"},
        {"WORKER_CHUNK_MESSAGES": "0"},
        {"WORKER_CHUNK_MESSAGES": "x"},
        {"PREDICT_MAX_LOADED": "0"},
        {"PREDICT_MAX_LOADED": "two"},
        {"PREDICT_MISS_CACHE_S": "-1"},
        {"PREDICT_MISS_CACHE_S": "nan"},
    ],
)
def test_worker_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(WorkerConfigError):
        WorkerSettings.from_env(env)


def test_make_run_defaults_match_the_contract() -> None:
    config = StackConfig.from_env({})
    assert (config.port, config.pubsub_port, config.firestore_port) == (8080, 8085, 8086)
    assert config.workers == 1 and config.worker_http_port == 8090
    assert config.api_keys == DEV_API_KEYS == "dev:dev-key-123"
    assert config.url == "http://127.0.0.1:8080"


def test_make_run_ports_move_with_the_environment() -> None:
    config = StackConfig.from_env(
        {
            "PORT": "9080",
            "PUBSUB_PORT": "9085",
            "FIRESTORE_PORT": "9086",
            "WORKERS": "3",
            "WORKER_HTTP_PORT": "9090",
            "DEADLETTER_PORT": "9087",
            "API_KEYS": "me:mine",
        }
    )
    assert config.ports() == {
        "PORT": 9080,
        "PUBSUB_PORT": 9085,
        "FIRESTORE_PORT": 9086,
        "DEADLETTER_PORT": 9087,
        "WORKER_HTTP_PORT+0": 9090,
        "WORKER_HTTP_PORT+1": 9091,
        "WORKER_HTTP_PORT+2": 9092,
    }
    assert config.api_keys == "me:mine"


def test_make_run_signs_webhooks_with_a_valid_development_secret_unless_told_otherwise() -> None:
    config = StackConfig.from_env({})
    assert config.webhook_secrets == DEV_WEBHOOK_SECRETS
    # The sender and the ingress read it as they read WEBHOOK_SECRETS (whsec_ + base64 of 32 bytes).
    secrets = SigningSecrets.from_sources(config.webhook_secrets)
    assert "dev" in secrets and secrets.for_tenant("dev") == DEV_WEBHOOK_SECRETS.partition(":")[2]
    mine = "me:whsec_" + "A" * 44
    assert StackConfig.from_env({"WEBHOOK_SECRETS": mine}).webhook_secrets == mine
