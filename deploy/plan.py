"""The deploy as data: every command and API call, in order, each with how to see it is done.

Steps, in order (``STEPS``); docs/deploy.md explains each:

    apis        turn on the APIs
    registry    the Artifact Registry repository; the build's identity may push to it
    accounts    the service accounts and their project roles (deploy/identities.py)
    secrets     API keys, webhook signing secrets, the Prometheus sidecar's config
    buckets     the predict models bucket (worker reads), the build's source bucket
    pubsub      topics and subscriptions (emulators/provision.py's calls)
    firestore   the database, composite indexes, TTL policies, index exemptions
    deadletter  the dead-letter function, its Eventarc trigger's identity and invoker grant
    images      one Cloud Build build, every image at ONE tag
    cluster     GKE Autopilot, Workload Identity, the autoscaler's metrics, k8s/ at that tag
    cloudrun    the ingress at that tag, public through invoker-iam-disabled
    monitoring  dashboards and alerts (the monitoring package)

The first five are built in deploy/foundation.py, the next three in deploy/backends.py, the rest
here; an ``Action`` is deploy/action.py's, and the command lines they share deploy/gcloud.py's.

An ``Action`` whose ``check`` exits 0 (and prints ``expect``, when set) is already done and is
skipped. Actions without a check use a verb that is idempotent by itself (``services enable``,
``add-iam-policy-binding``, ``kubectl apply``, ``run services replace``, converging API calls).
Placeholders resolved only in a real run: ``{PROJECT_NUMBER}``, and ``{SECRET:NAME}`` (a secret's
latest value) in a body.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from deploy import backends, foundation, identities, render
from deploy.action import Action, Kind
from deploy.foundation import APIS, PUBSUB_AGENT, SECRET_FILES
from deploy.gcloud import gcloud, project_binding
from deploy.identities import CLUSTER, NAMESPACE, Grant, email

__all__ = [
    "APIS",
    "METRICS_ADAPTER",
    "PUBSUB_AGENT",
    "SECRET_FILES",
    "STEPS",
    "Action",
    "Kind",
    "build",
    "default_tag",
    "workdir",
]

STEPS = (
    "apis",
    "registry",
    "accounts",
    "secrets",
    "buckets",
    "pubsub",
    "firestore",
    "deadletter",
    "images",
    "cluster",
    "cloudrun",
    "monitoring",
)
METRICS_ADAPTER = (
    "https://raw.githubusercontent.com/GoogleCloudPlatform/k8s-stackdriver/master/"
    "custom-metrics-stackdriver-adapter/deploy/production/adapter_new_resource_model.yaml"
)
"""The Custom Metrics Stackdriver Adapter: the HPAs read the subscriptions' backlog through it."""


def default_tag() -> str:
    """The checked-out commit's short sha: what the build is tagged with unless --tag says."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=render.ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit("not a git checkout: pass --tag")
    return done.stdout.strip()


def workdir(project: str, tag: str) -> Path:
    """Where rendered manifests and the staged function source are written."""
    return Path(tempfile.gettempdir()) / f"omni-deploy-{project}-{tag}"


def build(
    project: str,
    region: str,
    tag: str,
    *,
    api_keys_file: str | None = None,
    webhook_secrets_file: str | None = None,
) -> list[Action]:
    """The whole deploy of ``project`` in ``region``, every image at ``tag``. The key files are
    needed only while their secret has no version yet (the first deploy)."""
    work = workdir(project, tag)
    files = {"omni-api-keys": api_keys_file, "omni-webhook-secrets": webhook_secrets_file}
    secret_files = {name: path for name, path in files.items() if path}
    actions: list[Action] = []
    for step in STEPS:
        if step == "secrets":
            actions.extend(foundation.secrets(project, region, tag, work, secret_files))
        else:
            actions.extend(_STEP_BUILDERS[step](project, region, tag, work))
    return actions


def _images(project: str, region: str, tag: str, work: Path) -> list[Action]:
    images = render.built_images(project, region, tag)
    build_account = email("omni-build", project)
    return [
        Action(
            "images",
            "gcloud",
            gcloud(
                project,
                "builds",
                "submit",
                f"--config={render.CLOUDBUILD}",
                f"--substitutions=_REGION={region},_TAG={tag}",
                f"--service-account=projects/{project}/serviceAccounts/{build_account}",
                f"--gcs-source-staging-dir=gs://{identities.build_bucket(project)}/source",
                str(render.ROOT),
            ),
            body={"images": images},
            # Cloud Build pushes the images together once every step succeeded.
            check=("gcloud", "artifacts", "docker", "images", "describe", images[-1]),
        )
    ]


def _cluster(project: str, region: str, tag: str, work: Path) -> list[Action]:
    location = f"--region={region}"
    actions = [
        Action(
            "cluster",
            "gcloud",
            gcloud(project, "container", "clusters", "create-auto", CLUSTER, location),
            check=gcloud(project, "container", "clusters", "describe", CLUSTER, location),
        ),
        Action(
            "cluster",
            "gcloud",
            gcloud(project, "container", "clusters", "get-credentials", CLUSTER, location),
        ),
    ]
    # Workload Identity: needs the cluster (it creates the PROJECT.svc.id.goog pool).
    for name in identities.WORKLOAD_IDENTITY:
        actions.append(
            Action(
                "cluster",
                "gcloud",
                gcloud(
                    project,
                    "iam",
                    "service-accounts",
                    "add-iam-policy-binding",
                    email(name, project),
                    "--role=roles/iam.workloadIdentityUser",
                    f"--member=serviceAccount:{project}.svc.id.goog[{NAMESPACE}/{name}]",
                ),
            )
        )
    adapter = (
        "principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
        f"workloadIdentityPools/{project}.svc.id.goog/subject/ns/custom-metrics/sa/"
        "custom-metrics-stackdriver-adapter"
    )
    directory = work / "k8s"
    files = {
        str(directory / path): text
        for path, text in render.kustomization(project, region, tag).items()
    }
    actions += [
        Action("cluster", "kubectl", ("kubectl", "apply", "-f", METRICS_ADAPTER)),
        project_binding("cluster", project, adapter, Grant("roles/monitoring.viewer")),
        Action("cluster", "kubectl", ("kubectl", "apply", "-k", str(directory)), files=files),
        # The sender's signing secrets, copied from Secret Manager (its pods wait for it).
        Action(
            "cluster",
            "kubectl",
            ("kubectl", "apply", "-f", "-"),
            body={
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "omni-webhook-secrets", "namespace": NAMESPACE},
                "stringData": {"webhook-secrets": "{SECRET:omni-webhook-secrets}"},
            },
        ),
    ]
    return actions


def _cloudrun(project: str, region: str, tag: str, work: Path) -> list[Action]:
    path = str(work / "cloudrun.yaml")
    return [
        Action(
            "cloudrun",
            "gcloud",
            gcloud(project, "run", "services", "replace", path, f"--region={region}"),
            files={path: render.cloud_run_service(project, region, tag)},
        )
    ]


def _monitoring(project: str, region: str, tag: str, work: Path) -> list[Action]:
    # The dashboards and alert policies are the monitoring package's (monitoring.plan/apply);
    # run.py hands the step to monitoring.apply, dry run included.
    return [Action("monitoring", "api", ("monitoring", "apply"), body={"project": project})]


_STEP_BUILDERS: dict[str, Any] = {
    "apis": foundation.apis,
    "registry": foundation.registry,
    "accounts": foundation.accounts,
    "buckets": foundation.buckets,
    "pubsub": backends.pubsub,
    "firestore": backends.firestore,
    "deadletter": backends.deadletter,
    "images": _images,
    "cluster": _cluster,
    "cloudrun": _cloudrun,
    "monitoring": _monitoring,
}
