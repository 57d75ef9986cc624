"""The deploy's plan and the deployment files agree: run on the current files, every check is
silent. Each check is shown failing on the old files in test_old_files.py."""

from __future__ import annotations

import json
from typing import Any

from deploy.plan import Action
from deploy.render import ROOT
from emulators import provision
from tests.deploy import checks
from tests.deploy.checks import Facts
from tests.deploy.needs import NEEDS, NO_CLOUD_CALLS, REQUIRED_ENV

SERVICE_PACKAGES = {
    "omni-webhooks": ("webhooks",),
    "omni-reconciler": ("reconciler",),
}
ENV_SOURCES = {
    # common/ is shipped in every image and reads what all services share (GOOGLE_CLOUD_PROJECT).
    "ingress": ("ingress", "common"),
    "worker": ("worker", "common"),
    "webhooks": ("webhooks", "common"),
    "reconciler": ("reconciler", "common"),
}

Manifest = dict[str, Any]


def test_every_image_pulled_is_pushed_by_the_build_at_the_one_tag(
    facts: Facts, manifests: list[Manifest], service: Manifest
) -> None:
    assert checks.check_images(facts, manifests, service) == []
    pulled = set(checks.pulled_images(manifests, service))
    ours = {image for image in pulled if "-docker.pkg.dev/demo/" in image}
    assert ours == facts.pushed  # nothing built that nobody runs
    assert {image.rpartition(":")[2] for image in ours} == {"abc1234"}


def test_every_named_service_account_is_created_with_exactly_the_roles_its_code_needs(
    facts: Facts, manifests: list[Manifest], service: Manifest
) -> None:
    assert checks.check_accounts(facts, manifests, service) == []
    named = checks.named_accounts(manifests, service, facts)
    assert "omni-reconciler@demo.iam.gserviceaccount.com" in named


def test_every_role_in_the_table_names_code_that_still_makes_the_call() -> None:
    for account, needs in NEEDS.items():
        for need in needs:
            assert need.marker in (ROOT / need.module).read_text(), (account, need)


def test_services_make_no_call_their_account_has_no_role_for() -> None:
    for account, markers in NO_CLOUD_CALLS.items():
        for package in SERVICE_PACKAGES[account]:
            for path in (ROOT / package).rglob("*.py"):
                text = path.read_text()
                assert not [m for m in markers if m in text], (account, path)


def test_every_mounted_secret_and_bucket_is_created(
    facts: Facts, manifests: list[Manifest], service: Manifest
) -> None:
    assert checks.check_secrets_and_buckets(facts, manifests, service) == []
    assert "demo-omni-models" in facts.buckets


def test_every_autoscaled_subscription_is_provisioned(
    facts: Facts, manifests: list[Manifest]
) -> None:
    assert checks.check_autoscaled_subscriptions(facts, manifests) == []


def test_every_variable_a_service_needs_is_set_in_its_manifests(
    facts: Facts, manifests: list[Manifest], service: Manifest
) -> None:
    assert checks.check_environment(facts, manifests, service) == []
    # The table names variables the services really read.
    for kind, variables in REQUIRED_ENV.items():
        source = "".join(
            path.read_text()
            for package in ENV_SOURCES[kind]
            for path in (ROOT / package).rglob("*.py")
        )
        for variable in variables:
            assert f'"{variable}"' in source or f"'{variable}'" in source, (kind, variable)


def test_each_services_settings_accept_its_manifest_environment(
    manifests: list[Manifest], service: Manifest
) -> None:
    from ingress.settings import Settings
    from reconciler.settings import ReconcilerSettings
    from webhooks.settings import SenderSettings
    from worker.settings import WorkerSettings

    readers = {
        "ingress": Settings.from_env,
        "worker": WorkerSettings.from_env,
        "webhooks": SenderSettings.from_env,
        "reconciler": ReconcilerSettings.from_env,
    }
    for kind, places in checks.environments(manifests, service).items():
        for _where, env in places:
            assert readers[kind](env).project == "demo"


def test_network_policies_let_in_gkes_managed_prometheus(manifests: list[Manifest]) -> None:
    assert checks.check_scrape_namespace(manifests) == []


def test_the_ingress_is_public_without_an_all_users_binding(
    facts: Facts, service: Manifest
) -> None:
    assert checks.check_public_access(facts, service) == []


def test_the_build_runs_as_an_identity_that_may_push(facts: Facts) -> None:
    assert checks.check_build_identity(facts) == []


def test_the_dead_letter_trigger_has_an_explicit_identity_that_may_invoke(
    facts: Facts, actions: list[Action]
) -> None:
    (deploy,) = [a for a in actions if a.argv[1:3] == ("functions", "deploy")]
    assert checks.check_trigger_identity(facts, list(deploy.argv)) == []


def test_a_push_to_the_dead_letter_function_is_authenticated() -> None:
    resources = provision.Resources(
        project="demo",
        dead_letter_endpoint="https://omni-deadletter-xyz.a.run.app/",
        dead_letter_push_service_account="omni-deadletter-trigger@demo.iam.gserviceaccount.com",
    )
    settings = provision._dead_letter_subscription_settings(resources)
    assert checks.check_push_authenticated(settings) == []


def test_ttl_and_large_fields_are_exempt_and_never_queried() -> None:
    spec = provision.firestore_spec()
    calls = provision.firestore_admin_requests("demo", spec)
    assert checks.check_firestore_exemptions(spec, calls, checks.LARGE_FIELDS) == []
    # An exempted field could not be queried any more: no code may filter or order on one.
    exempt = {o["fieldPath"] for o in spec["fieldOverrides"] if o.get("indexes") == []}
    packages = ("ingress", "worker", "webhooks", "reconciler", "deadletter", "schemas")
    assert exempt & checks.queried_fields(ROOT, packages) == set()
    composite = {f["fieldPath"] for index in spec["indexes"] for f in index["fields"]}
    assert exempt & composite == set()


def test_docs_and_comments_state_what_is_true() -> None:
    texts = {
        name: (ROOT / name).read_text()
        for name in (
            "docs/deploy.md",
            "docs/reliability.md",
            "docs/decisions.md",
            "k8s/README.md",
            "k8s/base/hpa.yaml",
            "worker/settings.py",
            "ingress/batches/chunkwriter.py",
        )
    }
    assert checks.check_text_claims(texts, provision.ACK_DEADLINE_S) == []


def test_the_plan_is_data_that_survives_json(actions: list[Action]) -> None:
    assert [Action.from_json(json.loads(json.dumps(a.to_json()))) for a in actions] == actions


def test_a_tag_that_reads_as_a_number_stays_a_string_for_kustomize() -> None:
    # A short commit such as 5594e13 is a float to YAML 1.2 (kustomize), not to PyYAML.
    from deploy.render import kustomization

    top = kustomization("demo", "europe-west1", "5594e13")["kustomization.yaml"]
    assert "newTag: '5594e13'" in top and "newTag: 5594e13" not in top
