"""Consistency checks between the deploy's plan and the deployment files, offline.

Each check takes plain facts (``Facts``: what the deploy creates, grants and pushes; the rendered
manifests) and returns the problems it found as sentences, empty when all agree. The facts come
from ``python -m deploy --json`` for the current files, and from the old docs/deploy.md for the
commit before ``make deploy`` existed (tests/deploy/test_old_files.py), so each check can be
shown to catch what it was written for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.plan import Action
from tests.deploy.needs import NEEDS, REQUIRED_ENV

LARGE_FIELDS = {"input", "result", "events", "error"}
"""Fields of a job document that can be large and that no query reads: exempt from indexing."""

GMP_NAMESPACE = "gke-gmp-system"
"""Where GKE's managed collection runs Managed Service for Prometheus's collectors."""
Manifest = dict[str, Any]


@dataclass
class Facts:
    """What a deploy does, as far as the checks care."""

    project: str
    accounts: set[str] = field(default_factory=set)
    """Emails of the service accounts created."""
    grants: set[tuple[str, str, str]] = field(default_factory=set)
    """(member, role, resource): resource ``project``, ``secret:N``, ``bucket:N``, ..."""
    secrets: set[str] = field(default_factory=set)
    secret_versions: set[str] = field(default_factory=set)
    buckets: set[str] = field(default_factory=set)
    subscriptions: set[str] = field(default_factory=set)
    pushed: set[str] = field(default_factory=set)
    build_identity: str | None = None
    trigger_identity: str | None = None
    function_identity: str | None = None
    public_through_all_users: bool = False
    kube_secrets: set[str] = field(default_factory=set)


def _flag(argv: Iterable[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def facts_from_plan(actions: list[Action], project: str) -> Facts:
    facts = Facts(project)
    for action in actions:
        argv = action.argv
        words = [a for a in argv if not a.startswith("--")]
        member, role = _flag(argv, "member"), _flag(argv, "role")
        if words[:4] == ["gcloud", "iam", "service-accounts", "create"]:
            facts.accounts.add(f"{words[4]}@{project}.iam.gserviceaccount.com")
        elif words[1:3] == ["projects", "add-iam-policy-binding"] and member and role:
            facts.grants.add((member, role, "project"))
        elif words[1:3] == ["secrets", "add-iam-policy-binding"] and member and role:
            facts.grants.add((member, role, f"secret:{words[3]}"))
        elif words[1:4] == ["storage", "buckets", "add-iam-policy-binding"] and member and role:
            facts.grants.add((member, role, f"bucket:{words[4].removeprefix('gs://')}"))
        elif words[1:4] == ["artifacts", "repositories", "add-iam-policy-binding"] and member:
            facts.grants.add((member, role or "", f"repository:{words[4]}"))
        elif words[1:3] == ["functions", "add-invoker-policy-binding"] and member:
            facts.grants.add((member, "roles/run.invoker", f"function:{words[3]}"))
        elif words[1:3] == ["secrets", "create"]:
            facts.secrets.add(words[3])
        elif words[1:4] == ["secrets", "versions", "add"]:
            facts.secret_versions.add(words[4])
        elif words[1:4] == ["storage", "buckets", "create"]:
            facts.buckets.add(words[4].removeprefix("gs://"))
        elif argv[:2] == ("pubsub", "converge_subscription") and action.body:
            facts.subscriptions.add(action.body["name"].rpartition("/")[2])
        elif words[1:3] == ["builds", "submit"] and action.body:
            facts.pushed |= set(action.body["images"])
            identity = _flag(argv, "service-account")
            facts.build_identity = identity.rpartition("/")[2] if identity else None
        elif words[1:3] == ["functions", "deploy"]:
            facts.trigger_identity = _flag(argv, "trigger-service-account")
            facts.function_identity = _flag(argv, "service-account")
        elif action.kind == "kubectl" and action.body and action.body.get("kind") == "Secret":
            facts.kube_secrets.add(action.body["metadata"]["name"])
        if member == "allUsers" and role == "roles/run.invoker":
            facts.public_through_all_users = True
    return facts


# -- what the manifests use --------------------------------------------------------------------


def pod_specs(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    pods = []
    for m in manifests:
        if m["kind"] == "Deployment":
            pods.append((m["metadata"]["name"], m["spec"]["template"]["spec"]))
        elif m["kind"] == "CronJob":
            pods.append(
                (m["metadata"]["name"], m["spec"]["jobTemplate"]["spec"]["template"]["spec"])
            )
    return pods


def pulled_images(manifests: list[Manifest], service: Manifest) -> dict[str, str]:
    """Image -> who pulls it: every container of the pods and of the Cloud Run service."""
    pulled = {}
    for name, pod in pod_specs(manifests):
        for container in pod["containers"]:
            pulled[container["image"]] = f"{name}/{container['name']}"
    for container in service["spec"]["template"]["spec"]["containers"]:
        pulled[container["image"]] = f"Cloud Run {service['metadata']['name']}/{container['name']}"
    return pulled


def named_accounts(manifests: list[Manifest], service: Manifest, facts: Facts) -> dict[str, str]:
    """Google service account email -> who names it: Kubernetes annotations, the Cloud Run
    service, the dead-letter function and its trigger, the build."""
    named = {}
    for m in manifests:
        account = m["metadata"].get("annotations", {}).get("iam.gke.io/gcp-service-account")
        if m["kind"] == "ServiceAccount" and account:
            named[account] = f"ServiceAccount {m['metadata']['name']}"
    named[service["spec"]["template"]["spec"]["serviceAccountName"]] = "the Cloud Run service"
    for email, who in (
        (facts.trigger_identity, "the dead-letter trigger"),
        (facts.function_identity, "the dead-letter function"),
        (facts.build_identity, "the Cloud Build build"),
    ):
        if email:
            named[email] = who
    return named


# -- the checks ------------------------------------------------------------------------------------


def check_images(facts: Facts, manifests: list[Manifest], service: Manifest) -> list[str]:
    """Every image of ours that something pulls is pushed by the build, at the same tag."""
    registry = f"-docker.pkg.dev/{facts.project}/"
    problems = []
    for image, who in sorted(pulled_images(manifests, service).items()):
        if registry in image and image not in facts.pushed:
            problems.append(
                f"{who} pulls {image}, which the build does not push {sorted(facts.pushed)}"
            )
    tags = {image.rpartition(":")[2] for image in facts.pushed}
    if len(tags) > 1:
        problems.append(f"the build pushes several tags: {sorted(tags)}")
    return problems


def check_accounts(facts: Facts, manifests: list[Manifest], service: Manifest) -> list[str]:
    """Every Google service account named anywhere is created and has exactly its roles."""
    problems = []
    for email, who in sorted(named_accounts(manifests, service, facts).items()):
        if email not in facts.accounts:
            problems.append(f"{email} (named by {who}) is never created")
    for name, needs in NEEDS.items():
        member = f"serviceAccount:{name}@{facts.project}.iam.gserviceaccount.com"
        wanted = {(n.role, n.resource.format(project=facts.project)) for n in needs}
        granted = {(role, resource) for m, role, resource in facts.grants if m == member}
        for role, resource in sorted(wanted - granted):
            problems.append(f"{name} misses {role} on {resource}")
        for role, resource in sorted(granted - wanted):
            problems.append(f"{name} has {role} on {resource}, which its code does not need")
    return problems


def check_secrets_and_buckets(
    facts: Facts, manifests: list[Manifest], service: Manifest
) -> list[str]:
    """Every secret and bucket a pod or the Cloud Run service mounts is created (and a Secret
    Manager secret has a version to mount)."""
    problems = []
    for volume in service["spec"]["template"]["spec"].get("volumes", []):
        name = volume.get("secret", {}).get("secretName")
        if name and name not in facts.secrets:
            problems.append(f"Cloud Run mounts secret {name}, which is never created")
        elif name and name not in facts.secret_versions:
            problems.append(f"Cloud Run mounts secret {name}, which never gets a version")
    for pod_name, pod in pod_specs(manifests):
        for volume in pod.get("volumes", []):
            secret = volume.get("secret")
            if (
                secret
                and not secret.get("optional")
                and secret["secretName"] not in facts.kube_secrets
            ):
                problems.append(f"{pod_name} mounts Secret {secret['secretName']}, never created")
            csi = volume.get("csi", {})
            if csi.get("driver") == "gcsfuse.csi.storage.gke.io":
                bucket = csi["volumeAttributes"]["bucketName"]
                if bucket not in facts.buckets:
                    problems.append(f"{pod_name} mounts bucket {bucket}, which is never created")
    return problems


def check_autoscaled_subscriptions(facts: Facts, manifests: list[Manifest]) -> list[str]:
    """Every subscription an HPA scales on is provisioned under that name."""
    problems = []
    for m in manifests:
        if m["kind"] != "HorizontalPodAutoscaler":
            continue
        for metric in m["spec"].get("metrics", []):
            labels = metric.get("external", {}).get("metric", {}).get("selector", {})
            subscription = labels.get("matchLabels", {}).get("resource.labels.subscription_id")
            if subscription and subscription not in facts.subscriptions:
                problems.append(
                    f"{m['metadata']['name']} scales on {subscription}, never provisioned"
                )
    return problems


def environments(
    manifests: list[Manifest], service: Manifest
) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Service -> [(where, the literal environment its container starts with)]."""
    config_maps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    found: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for name, pod in pod_specs(manifests):
        for container in pod["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps.get(source["configMapRef"]["name"], {}))
            env.update({e["name"]: e.get("value", "<secret>") for e in container.get("env", [])})
            kind = {"worker": "worker", "webhooks": "webhooks", "reconciler": "reconciler"}
            found.setdefault(kind[container["name"]], []).append((name, env))
    (ingress,) = [c for c in service["spec"]["template"]["spec"]["containers"] if c.get("ports")]
    env = {e["name"]: e.get("value", "<secret>") for e in ingress.get("env", [])}
    found["ingress"] = [("Cloud Run ingress", env)]
    return found


def check_environment(facts: Facts, manifests: list[Manifest], service: Manifest) -> list[str]:
    """Every variable a service needs in production is set, and its project is the project."""
    problems = []
    for kind, places in environments(manifests, service).items():
        for where, env in places:
            for variable, reason in REQUIRED_ENV[kind].items():
                if not env.get(variable):
                    problems.append(f"{where} does not set {variable}: {reason}")
            if env.get("GOOGLE_CLOUD_PROJECT") not in (None, facts.project):
                problems.append(f"{where} runs against project {env['GOOGLE_CLOUD_PROJECT']}")
    return problems


def check_scrape_namespace(manifests: list[Manifest]) -> list[str]:
    """NetworkPolicies let metrics in from GKE's managed Prometheus namespace."""
    problems = []
    for m in manifests:
        if m["kind"] != "NetworkPolicy":
            continue
        for rule in m["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
                namespace = labels.get("kubernetes.io/metadata.name")
                if namespace is not None and namespace != GMP_NAMESPACE:
                    problems.append(
                        f"NetworkPolicy {m['metadata']['name']} lets in namespace {namespace}; "
                        f"GKE's managed Prometheus scrapes from {GMP_NAMESPACE}"
                    )
    return problems


def check_public_access(facts: Facts, service: Manifest) -> list[str]:
    """Public through invoker-iam-disabled, never an allUsers binding."""
    problems = []
    if (
        service["metadata"].get("annotations", {}).get("run.googleapis.com/invoker-iam-disabled")
        != "true"
    ):
        problems.append("the Cloud Run service does not disable the invoker IAM check")
    if facts.public_through_all_users:
        problems.append("an allUsers run.invoker binding: refused under domain-restricted sharing")
    return problems


def check_build_identity(facts: Facts) -> list[str]:
    """The build runs as an identity the deploy creates and lets push to the repository."""
    if facts.build_identity is None:
        return ["the build runs as Cloud Build's default identity, which may not push"]
    member = f"serviceAccount:{facts.build_identity}"
    if not any(m == member and r == "roles/artifactregistry.writer" for m, r, _ in facts.grants):
        return [f"{facts.build_identity} may not push to Artifact Registry"]
    return []


def check_trigger_identity(facts: Facts, deploy_argv: list[str]) -> list[str]:
    """The dead-letter function's Eventarc trigger has an explicit identity that may invoke it."""
    identity = _flag(deploy_argv, "trigger-service-account")
    if identity is None:
        return ["the dead-letter trigger runs as a default identity (no --trigger-service-account)"]
    if (
        f"serviceAccount:{identity}",
        "roles/run.invoker",
        "function:omni-deadletter",
    ) not in facts.grants:
        return [f"{identity} may not invoke omni-deadletter"]
    return []


def check_push_authenticated(settings: dict[str, Any]) -> list[str]:
    """A push to a real (https) endpoint carries an OIDC token."""
    push = settings.get("push_config", {})
    if str(push.get("push_endpoint", "")).startswith("https://") and "oidc_token" not in push:
        return [f"the push to {push['push_endpoint']} carries no OIDC token: Cloud Run refuses it"]
    return []


def check_firestore_exemptions(
    spec: dict[str, Any], calls: list[tuple[str, dict[str, Any]]], large_fields: set[str]
) -> list[str]:
    """Every TTL field and every large never-queried field of ``jobs`` is exempt from single-field
    indexes, and provisioning applies each exemption."""
    applied = {
        req["field"]["name"].split("/collectionGroups/")[1].replace("/fields/", ".")
        for method, req in calls
        if method == "update_field" and req["field"].get("index_config") == {"indexes": []}
    }
    problems = []
    wanted = {
        f"{o['collectionGroup']}.{o['fieldPath']}" for o in spec["fieldOverrides"] if o.get("ttl")
    }
    wanted |= {f"jobs.{name}" for name in large_fields}
    for name in sorted(wanted - applied):
        problems.append(f"{name} keeps its single-field indexes: provisioning applies no exemption")
    return problems


def queried_fields(root: Path, packages: Iterable[str]) -> set[str]:
    """Fields the code filters or orders on (FieldFilter, where, order_by)."""
    pattern = re.compile(r"(?:FieldFilter|where|order_by)\(\s*\"([\w.]+)\"")
    found = set()
    for package in packages:
        for path in (root / package).rglob("*.py"):
            found |= set(pattern.findall(path.read_text()))
    return found


def check_text_claims(texts: dict[str, str], ack_deadline_s: int) -> list[str]:
    """Docs and comments that state what is no longer true."""
    problems = []
    for name, text in sorted(texts.items()):
        flat = " ".join(text.split())
        for seconds in re.findall(r"(\d+) s ack deadline", flat):
            if int(seconds) != ack_deadline_s:
                problems.append(
                    f"{name} says a {seconds} s ack deadline; provisioning sets {ack_deadline_s} s"
                )
        if re.search(
            r"GKE does not offer|GKE offers no scale to zero|cannot scale to\s+zero", flat
        ):
            problems.append(f"{name} says GKE cannot scale to zero (it can from 1.37)")
        if re.search(r"500 writes (a|per) commit|takes 500 writes at most", flat):
            problems.append(f"{name} cites Firestore's removed 500-writes-per-commit limit")
    return problems
