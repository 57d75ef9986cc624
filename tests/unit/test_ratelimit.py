"""ingress/limits/ratelimit.py: the policy, the token bucket's arithmetic and the split by instance
count;
ingress/limits/instances.py's count when a heartbeat fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.settings import ConfigError
from ingress.limits.instances import InstanceRegistry
from ingress.limits.ratelimit import (
    DEFAULT_STREAMS,
    LimitPolicy,
    RateLimiter,
    TenantLimits,
    limits_from,
)
from ingress.settings import Settings

KEYS = {"API_KEYS": "acme:k1"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(policy: dict[str, Any], instances: int = 1) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(LimitPolicy.parse(json.dumps(policy)), lambda: instances, clock), clock


# -- policy --------------------------------------------------------------------------------------


def test_a_tenant_entry_overrides_the_default_field_by_field() -> None:
    policy = LimitPolicy.parse(
        '{"*": {"rate": 50, "burst": 100, "in_flight": 200000},'
        ' "acme": {"rate": 5, "burst": 10}, "free": {"in_flight": null}}'
    )

    assert policy.for_tenant("acme") == TenantLimits(rate=5, burst=10, in_flight=200000)
    assert policy.for_tenant("free") == TenantLimits(rate=50, burst=100, in_flight=None)
    assert policy.for_tenant("anyone") == TenantLimits(rate=50, burst=100, in_flight=200000)
    assert policy.limits_rate


def test_no_policy_limits_nobody_but_the_built_in_streams_cap() -> None:
    policy = limits_from(None, None)

    assert policy.for_tenant("anyone") == TenantLimits()
    assert policy.for_tenant("anyone") == TenantLimits(None, None, None, streams=DEFAULT_STREAMS)
    assert not policy.limits_rate
    assert Settings.from_env(KEYS).tenant_limits == LimitPolicy()


def test_streams_merge_field_by_field_and_null_lifts_the_built_in_cap() -> None:
    policy = LimitPolicy.parse(
        '{"*": {"rate": 50, "streams": 20}, "big": {"streams": 500}, "open": {"streams": null},'
        ' "slow": {"rate": 1}}'
    )

    assert policy.for_tenant("anyone").streams == 20
    assert policy.for_tenant("big") == TenantLimits(rate=50, burst=50, streams=500)
    assert policy.for_tenant("open").streams is None
    assert policy.for_tenant("slow") == TenantLimits(rate=1, burst=1, streams=20)


def test_a_policy_without_streams_keeps_the_built_in_cap_and_may_lift_it_for_all() -> None:
    kept = LimitPolicy.parse('{"*": {"in_flight": 10}, "acme": {"rate": 5}}')
    lifted = LimitPolicy.parse('{"*": {"streams": null}, "acme": {"streams": 3}}')

    assert kept.for_tenant("anyone").streams == DEFAULT_STREAMS
    assert kept.for_tenant("acme").streams == DEFAULT_STREAMS
    assert lifted.for_tenant("anyone").streams is None
    assert lifted.for_tenant("acme").streams == 3


def test_a_rate_without_a_burst_bursts_its_rate_and_at_least_one() -> None:
    policy = LimitPolicy.parse('{"a": {"rate": 20}, "b": {"rate": 0.5}}')

    assert policy.for_tenant("a").burst == 20
    assert policy.for_tenant("b").burst == 1
    assert policy.for_tenant("c") == TenantLimits()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"a": 5}', "must be an object"),
        ('{"a": {"rat": 5}}', "unknown fields ['rat']"),
        ('{"a": {"rate": 0}}', "a'].rate must be a positive number"),
        ('{"a": {"rate": -1}}', "positive number"),
        ('{"a": {"rate": "5"}}', "positive number"),
        ('{"a": {"rate": true}}', "positive number"),
        ('{"a": {"in_flight": 2.5}}', "whole number"),
        ('{"a": {"streams": 2.5}}', "a'].streams must be a whole number"),
        ('{"a": {"streams": 0}}', "a'].streams must be a positive number"),
        ('{"*": {"streams": "many"}}', r"\*'].streams must be a positive number"),
        ('{"a": {"burst": 10}}', "burst without a rate"),
        ('{"*": {"burst": 10}}', "burst without a rate"),
    ],
)
def test_an_invalid_policy_stops_the_ingress_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_env({**KEYS, "TENANT_LIMITS": text})


def test_the_policy_may_come_from_a_file_but_not_from_both(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"acme": {"rate": 5, "in_flight": 3}}')

    settings = Settings.from_env({**KEYS, "TENANT_LIMITS_FILE": str(path)})

    assert settings.tenant_limits.for_tenant("acme") == TenantLimits(5, 5, 3)
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({**KEYS, "TENANT_LIMITS_FILE": str(path), "TENANT_LIMITS": "{}"})
    with pytest.raises(ConfigError, match="TENANT_LIMITS_FILE cannot be read"):
        Settings.from_env({**KEYS, "TENANT_LIMITS_FILE": str(tmp_path / "missing.json")})
    path.write_text('{"acme": {"rate": -5}}')
    with pytest.raises(ConfigError, match=r"TENANT_LIMITS_FILE\['acme'\]"):
        Settings.from_env({**KEYS, "TENANT_LIMITS_FILE": str(path)})


def test_the_heartbeat_interval_is_checked() -> None:
    assert Settings.from_env({**KEYS, "INSTANCE_HEARTBEAT_S": "0.5"}).instance_heartbeat_s == 0.5
    with pytest.raises(ConfigError, match="INSTANCE_HEARTBEAT_S"):
        Settings.from_env({**KEYS, "INSTANCE_HEARTBEAT_S": "0"})


# -- the bucket ----------------------------------------------------------------------------------


def test_a_full_bucket_lets_a_burst_through_then_refuses_with_retry_after() -> None:
    rates, _clock = limiter({"acme": {"rate": 2, "burst": 3}})

    passed = [rates.check("acme") for _ in range(3)]
    refused = rates.check("acme")

    assert all(d is not None and d.allowed for d in passed)
    assert [d.remaining for d in passed if d is not None] == [2, 1, 0]
    assert refused is not None and not refused.allowed
    assert refused.retry_after_s == 1  # half a second to the next token, rounded up
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["RateLimit-Limit"] == "3"
    assert refused.reset_s == 2  # 3 tokens at 2/s


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    rates, clock = limiter({"acme": {"rate": 2, "burst": 3}})
    for _ in range(3):
        rates.check("acme")

    clock.now += 0.5  # one token back
    first = rates.check("acme")
    second = rates.check("acme")
    clock.now += 3600  # never more than the burst
    burst = [rates.check("acme") for _ in range(4)]

    assert first is not None and first.allowed
    assert second is not None and not second.allowed
    assert [d.allowed for d in burst if d is not None] == [True, True, True, False]


def test_retry_after_is_whole_seconds_until_a_token_and_at_least_one() -> None:
    rates, clock = limiter({"slow": {"rate": 0.1, "burst": 1}})
    rates.check("slow")

    clock.now += 2.5
    refused = rates.check("slow")

    assert refused is not None and refused.retry_after_s == 8  # 7.5 s to go, rounded up
    clock.now += 7.5
    allowed = rates.check("slow")
    assert allowed is not None and allowed.allowed


def test_tenants_have_their_own_buckets_and_unlimited_ones_none() -> None:
    rates, _clock = limiter({"a": {"rate": 1, "burst": 1}, "b": {"rate": 1, "burst": 1}})

    assert [rates.check("a").allowed for _ in range(2)] == [True, False]  # type: ignore[union-attr]
    assert rates.check("b").allowed  # type: ignore[union-attr]
    assert rates.check("c") is None


def test_each_of_n_instances_gets_a_nth_of_the_rate_and_burst() -> None:
    rates, clock = limiter({"acme": {"rate": 20, "burst": 10}}, instances=4)

    assert rates.share("acme") == (5.0, 2.5)
    passed = [rates.check("acme") for _ in range(3)]
    assert [d.allowed for d in passed if d is not None] == [True, True, False]
    refused = passed[-1]
    assert refused is not None and refused.retry_after_s == 1
    assert refused.remaining == 2  # 0.5 tokens here, times 4 instances: an estimate
    clock.now += 1.0
    assert [rates.check("acme").allowed for _ in range(3)] == [True, True, False]  # type: ignore[union-attr]


def test_a_burst_split_below_one_still_admits_one_request() -> None:
    rates, _clock = limiter({"acme": {"rate": 2, "burst": 2}}, instances=8)

    assert rates.share("acme") == (0.25, 1.0)
    assert [rates.check("acme").allowed for _ in range(2)] == [True, False]  # type: ignore[union-attr]


def test_a_change_in_the_instance_count_applies_at_the_next_request() -> None:
    count = [1]
    clock = FakeClock()
    policy = LimitPolicy.parse('{"acme": {"rate": 10, "burst": 10}}')
    rates = RateLimiter(policy, lambda: count[0], clock)
    rates.check("acme")  # 9 tokens left

    count[0] = 2  # a second instance: at most 5 here now

    assert [rates.check("acme").allowed for _ in range(6)] == [True] * 5 + [False]  # type: ignore[union-attr]


# -- the instance count --------------------------------------------------------------------------


class _Broken:
    """A Firestore client whose every call fails, as during an outage."""

    def collection(self, _name: str) -> _Broken:
        return self

    def document(self, _name: str) -> _Broken:
        return self

    def set(self, *_args: Any, **_kwargs: Any) -> None:
        raise TimeoutError("Firestore is down")


def test_a_failed_heartbeat_keeps_the_last_count() -> None:
    registry = InstanceRegistry(_Broken(), heartbeat_s=10)
    registry._live = 3  # what the last good beat counted

    with pytest.raises(TimeoutError):
        registry.beat()

    assert registry.live() == 3


def test_the_deployed_default_policy_parses() -> None:
    import yaml

    from emulators.localrun import ROOT

    service = yaml.safe_load((ROOT / "cloudrun.yaml").read_text())
    container = service["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}

    policy = Settings.from_env({**KEYS, "TENANT_LIMITS": env["TENANT_LIMITS"]}).tenant_limits

    assert policy.for_tenant("anyone") == TenantLimits(rate=50, burst=100, in_flight=2000000)
