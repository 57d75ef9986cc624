"""Each check catches the finding it was written for, on the files of commit df11c69 (before
``make deploy``): its deploy is what docs/deploy.md told a person to run, read from the docs."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from deploy.render import ROOT, fill
from tests.deploy import checks
from tests.deploy.checks import Facts
from tests.support.manifests import PROJECT, REGION, kustomize

OLD = "df11c69"
"""The last commit before python -m deploy."""
OLD_TAG = "v1"
"""The tag the old docs built with (``_TAG=v1``)."""
GIT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old commit's files, extracted."""
    done = subprocess.run(
        ["git", "archive", "--format=tar", OLD],
        cwd=ROOT,
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"commit {OLD} is not in this checkout")
    root = tmp_path_factory.mktemp("old")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(root, filter="data")
    return root


def old_facts(old: Path) -> Facts:
    """What the old docs/deploy.md had a person create, grant and push."""
    docs = (old / "docs" / "deploy.md").read_text()
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", docs, re.S)).replace("\\\n", " ")
    facts = Facts(PROJECT)
    for names in re.findall(r"for sa in ([^;]+); do\s+gcloud iam service-accounts create", bash):
        facts.accounts |= {f"{n}@{PROJECT}.iam.gserviceaccount.com" for n in names.split()}
    member = "serviceAccount:{}@" + PROJECT + ".iam.gserviceaccount.com"
    for roles, name in re.findall(r"for r in ([^;]+); do\s+bind (\S+) \$r", bash):
        facts.grants |= {(member.format(name), role, "project") for role in roles.split()}
    for name, role in re.findall(r"^bind (\S+) (roles/\S+)", bash, re.M):
        facts.grants.add((member.format(name), role, "project"))
    for secret, role, name in re.findall(
        r"gcloud secrets add-iam-policy-binding (\S+) --role=(\S+)\s+"
        r"--member=\"serviceAccount:([\w-]+)@",
        bash,
    ):
        facts.grants.add((member.format(name), role, f"secret:{secret}"))
    for secret in re.findall(r"gcloud secrets create (\S+) --data-file", bash):
        facts.secrets.add(secret)
        facts.secret_versions.add(secret)
    facts.kube_secrets |= set(re.findall(r"kubectl create secret generic (\S+)", bash))
    facts.buckets |= set(re.findall(r"gcloud storage buckets create gs://(\S+)", bash))
    facts.public_through_all_users = "--member=allUsers --role=roles/run.invoker" in bash
    build = re.search(r"gcloud builds submit[^\n]*", bash)
    assert build is not None
    facts.build_identity = None if "--service-account" not in build.group(0) else "?"
    config = yaml.safe_load((old / "cloudbuild.yaml").read_text())
    values = {**config["substitutions"], "_REGION": REGION, "_TAG": OLD_TAG, "PROJECT_ID": PROJECT}
    facts.pushed = {
        re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), image)
        for image in config["images"]
    }
    provision = _old_provision(old)
    facts.subscriptions = {
        provision.Resources(project=PROJECT).subscription_path(t).rpartition("/")[2]
        for t in provision.Resources(project=PROJECT).tasks
    }
    return facts


def _old_provision(old: Path) -> ModuleType:
    """The old provisioning module, importing the old ``schemas.messages`` it was written
    against (its subscription names and filters are not today's)."""
    messages = _module(old / "schemas" / "messages.py", "old_messages")
    current = sys.modules["schemas.messages"]
    sys.modules["schemas.messages"] = messages
    try:
        return _module(old / "emulators" / "provision.py", "old_provision")
    finally:
        sys.modules["schemas.messages"] = current


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def old_manifests(old: Path) -> list[dict[str, Any]]:
    for path in (old / "k8s").rglob("*.yaml"):
        path.write_text(fill(path.read_text(), PROJECT, REGION, OLD_TAG))
    return kustomize(old / "k8s")


def old_service(old: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        fill((old / "cloudrun.yaml").read_text(), PROJECT, REGION, OLD_TAG)
    )
    return document


def caught(name: str, problems: list[str]) -> list[str]:
    """Print what the check said on the old files (the closing note quotes it)."""
    print(f"\n[{name} on {OLD}]")  # noqa: T201
    for problem in problems:
        print(f"  {problem}")  # noqa: T201
    return problems


def test_images_v1_built_latest_pulled(old: Path) -> None:
    problems = caught(
        "check_images", checks.check_images(old_facts(old), old_manifests(old), old_service(old))
    )
    assert any("ingress:latest" in p for p in problems)
    assert any("worker-cuda:latest" in p for p in problems)


def test_reconciler_account_never_created_and_bucket_never_granted(old: Path) -> None:
    problems = caught(
        "check_accounts",
        checks.check_accounts(old_facts(old), old_manifests(old), old_service(old)),
    )
    assert any(p.startswith("omni-reconciler@demo.iam.gserviceaccount.com") for p in problems)
    assert "omni-worker misses roles/storage.objectViewer on bucket:demo-omni-models" in problems
    assert "omni-ingress misses roles/pubsub.viewer on project" in problems


def test_models_bucket_never_created(old: Path) -> None:
    problems = caught(
        "check_secrets_and_buckets",
        checks.check_secrets_and_buckets(old_facts(old), old_manifests(old), old_service(old)),
    )
    assert any("mounts bucket demo-omni-models, which is never created" in p for p in problems)


def test_network_policies_named_gmp_system(old: Path) -> None:
    problems = caught("check_scrape_namespace", checks.check_scrape_namespace(old_manifests(old)))
    assert len(problems) == 2
    assert all("gmp-system;" in p for p in problems)


def test_exemptions_were_never_applied(old: Path) -> None:
    provision = _old_provision(old)
    spec = yaml.safe_load((old / "firestore.indexes.json").read_text())
    calls = provision.firestore_admin_requests(PROJECT, spec)
    problems = caught(
        "check_firestore_exemptions",
        checks.check_firestore_exemptions(spec, calls, checks.LARGE_FIELDS),
    )
    assert any(p.startswith("jobs.expire_at ") for p in problems)
    assert any(p.startswith("jobs.input ") for p in problems)


def test_push_without_oidc(old: Path) -> None:
    provision = _old_provision(old)
    resources = provision.Resources(project=PROJECT, dead_letter_endpoint="https://dl.a.run.app/")
    problems = caught(
        "check_push_authenticated",
        checks.check_push_authenticated(provision._dead_letter_subscription_settings(resources)),
    )
    assert problems


def test_trigger_without_its_own_identity(old: Path) -> None:
    deploy = _module(old / "emulators" / "deadletter_deploy.py", "old_deadletter_deploy")
    argv = deploy.deploy_command(
        PROJECT,
        REGION,
        Path("src"),
        "jobs-dead",
        f"omni-deadletter@{PROJECT}.iam.gserviceaccount.com",
    )
    problems = caught("check_trigger_identity", checks.check_trigger_identity(old_facts(old), argv))
    assert problems


def test_public_through_all_users(old: Path) -> None:
    problems = caught(
        "check_public_access", checks.check_public_access(old_facts(old), old_service(old))
    )
    assert len(problems) == 2


def test_build_without_push_rights(old: Path) -> None:
    problems = caught("check_build_identity", checks.check_build_identity(old_facts(old)))
    assert problems


def test_stale_claims(old: Path) -> None:
    names = (
        "docs/deploy.md",
        "docs/decisions.md",
        "k8s/README.md",
        "k8s/base/hpa.yaml",
        "worker/settings.py",
        "ingress/itemdocs.py",
    )
    texts = {name: (old / name).read_text() for name in names}
    problems = caught("check_text_claims", checks.check_text_claims(texts, 20))
    assert any("60 s ack deadline" in p for p in problems)
    assert any("cannot scale to zero" in p for p in problems)
    assert any("500-writes" in p for p in problems)
