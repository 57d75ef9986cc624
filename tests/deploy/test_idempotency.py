"""A real run skips what its checks find done: the second run of the same plan changes nothing.

The cloud is faked here (a unit test): ``FakeCloud`` records what ran, and an action's check
passes once the action ran (printing what the action stored, for checks with ``expect``)."""

from __future__ import annotations

import io

import pytest

from deploy import run
from deploy.plan import Action

IDEMPOTENT_VERBS = (
    ("gcloud", "services", "enable"),
    ("gcloud", "projects", "add-iam-policy-binding"),
    ("gcloud", "secrets", "add-iam-policy-binding"),
    ("gcloud", "storage", "buckets", "add-iam-policy-binding"),
    ("gcloud", "artifacts", "repositories", "add-iam-policy-binding"),
    ("gcloud", "iam", "service-accounts", "add-iam-policy-binding"),
    ("gcloud", "functions", "add-invoker-policy-binding"),
    ("gcloud", "container", "clusters", "get-credentials"),
    ("gcloud", "run", "services", "replace"),
    ("kubectl", "apply"),
    ("pubsub",),
    ("firestore",),
    ("monitoring",),
)
"""Verbs that converge by themselves: running them again changes nothing."""


class FakeCloud:
    def __init__(self) -> None:
        self.state: dict[tuple[str, ...], str] = {}
        self.ran: list[Action] = []

    def done(self, action: Action) -> bool:
        assert action.check is not None
        if action.check not in self.state:
            return False
        return action.expect is None or self.state[action.check] == action.expect

    def apply(self, action: Action) -> None:
        self.ran.append(action)
        if action.check is not None:
            self.state[action.check] = action.expect or ""


def test_a_second_run_skips_every_action_that_has_a_check(actions: list[Action]) -> None:
    cloud = FakeCloud()
    first = run.execute(actions, cloud, io.StringIO())
    assert first == actions

    second = run.execute(actions, cloud, io.StringIO())

    assert [a for a in second if a.check is not None] == []
    for action in second:
        assert action.argv[: len(action.argv)][:4] and any(
            action.argv[: len(verb)] == verb for verb in IDEMPOTENT_VERBS
        ), action.argv


def test_a_changed_function_source_is_deployed_again(actions: list[Action]) -> None:
    cloud = FakeCloud()
    run.execute(actions, cloud, io.StringIO())
    (deploy,) = [a for a in actions if a.argv[1:3] == ("functions", "deploy")]
    assert deploy.check is not None
    cloud.state[deploy.check] = "0123456789abcdef"  # the deployed label: another source

    second = run.execute(actions, cloud, io.StringIO())

    assert deploy in second


def test_every_check_less_action_uses_an_idempotent_verb(actions: list[Action]) -> None:
    for action in actions:
        if action.check is None:
            assert any(action.argv[: len(verb)] == verb for verb in IDEMPOTENT_VERBS), action.argv


def test_a_missing_key_file_stops_the_real_run_with_what_to_pass() -> None:
    executor = run.Subprocesses("demo")
    with pytest.raises(run.DeployError, match="--api-keys-file"):
        executor._resolve("--data-file={API_KEYS_FILE}")
