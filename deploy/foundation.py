"""The plan's first steps, the ground the services stand on: the APIs, the image registry, the
service accounts and their project roles, the secrets and the buckets (deploy/plan.py's docstring
lists every step).
"""

from __future__ import annotations

from pathlib import Path

from deploy import identities, render
from deploy.action import Action
from deploy.gcloud import account_member, gcloud, project_binding, resource_grants
from deploy.identities import REPOSITORY, SECRETS, Grant, email

APIS = (
    "run.googleapis.com",
    "pubsub.googleapis.com",
    "firestore.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "container.googleapis.com",
    "cloudfunctions.googleapis.com",
    "eventarc.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    "cloudtrace.googleapis.com",
    "monitoring.googleapis.com",
    "logging.googleapis.com",
)
PUBSUB_AGENT = "serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
"""Pub/Sub's service agent: it forwards dead-lettered messages and acks the originals."""


def apis(project: str, region: str, tag: str, work: Path) -> list[Action]:
    return [Action("apis", "gcloud", gcloud(project, "services", "enable", *APIS))]


def registry(project: str, region: str, tag: str, work: Path) -> list[Action]:
    location = f"--location={region}"
    return [
        Action(
            "registry",
            "gcloud",
            gcloud(
                project,
                "artifacts",
                "repositories",
                "create",
                REPOSITORY,
                "--repository-format=docker",
                location,
            ),
            check=gcloud(project, "artifacts", "repositories", "describe", REPOSITORY, location),
        ),
        *resource_grants(project, region, f"repository:{REPOSITORY}", "registry"),
    ]


def accounts(project: str, region: str, tag: str, work: Path) -> list[Action]:
    actions = []
    for name in identities.roles(project):
        actions.append(
            Action(
                "accounts",
                "gcloud",
                gcloud(
                    project, "iam", "service-accounts", "create", name, f"--display-name={name}"
                ),
                check=gcloud(project, "iam", "service-accounts", "describe", email(name, project)),
            )
        )
    for name, grants in identities.roles(project).items():
        for grant in grants:
            if grant.resource == "project":
                actions.append(
                    project_binding("accounts", project, account_member(name, project), grant)
                )
    # Dead-lettering: Pub/Sub's service agent publishes to jobs-dead and acks the originals.
    for role in ("roles/pubsub.publisher", "roles/pubsub.subscriber"):
        actions.append(project_binding("accounts", project, PUBSUB_AGENT, Grant(role)))
    return actions


SECRET_FILES = {
    "omni-api-keys": "{API_KEYS_FILE}",
    "omni-webhook-secrets": "{WEBHOOK_SECRETS_FILE}",
}
"""The secrets whose first version is a file a person made, and the placeholder that stands for
it in the plan until ``--api-keys-file`` / ``--webhook-secrets-file`` names it."""


def secrets(
    project: str, region: str, tag: str, work: Path, secret_files: dict[str, str]
) -> list[Action]:
    actions = []
    for name in SECRETS:
        actions.append(
            Action(
                "secrets",
                "gcloud",
                gcloud(project, "secrets", "create", name, "--replication-policy=automatic"),
                check=gcloud(project, "secrets", "describe", name),
            )
        )
        actions.extend(resource_grants(project, region, f"secret:{name}", "secrets"))
    # The sidecar's config is a file of the repository: a new version only when it changed.
    config = (render.ROOT / "cloudrun-monitoring.yaml").read_text()
    path = str(work / "cloudrun-monitoring.yaml")
    actions.append(
        Action(
            "secrets",
            "gcloud",
            gcloud(
                project, "secrets", "versions", "add", "omni-run-gmp-config", f"--data-file={path}"
            ),
            check=gcloud(
                project, "secrets", "versions", "access", "latest", "--secret=omni-run-gmp-config"
            ),
            expect=config.strip(),
            files={path: config},
        )
    )
    # API keys and webhook secrets come from files a person makes (docs/deploy.md): the first
    # version from --api-keys-file / --webhook-secrets-file; later ones are rotations, by hand.
    for name, placeholder in SECRET_FILES.items():
        given = secret_files.get(name)
        actions.append(
            Action(
                "secrets",
                "gcloud",
                gcloud(
                    project,
                    "secrets",
                    "versions",
                    "add",
                    name,
                    f"--data-file={given or placeholder}",
                ),
                check=gcloud(
                    project, "secrets", "versions", "describe", "latest", f"--secret={name}"
                ),
            )
        )
    return actions


def buckets(project: str, region: str, tag: str, work: Path) -> list[Action]:
    actions = []
    for bucket in (identities.models_bucket(project), identities.build_bucket(project)):
        actions.append(
            Action(
                "buckets",
                "gcloud",
                gcloud(
                    project,
                    "storage",
                    "buckets",
                    "create",
                    f"gs://{bucket}",
                    f"--location={region}",
                    "--uniform-bucket-level-access",
                    "--public-access-prevention",
                ),
                check=gcloud(project, "storage", "buckets", "describe", f"gs://{bucket}"),
            )
        )
        actions.extend(resource_grants(project, region, f"bucket:{bucket}", "buckets"))
    return actions
