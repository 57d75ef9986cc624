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

An ``Action`` whose ``check`` exits 0 (and prints ``expect``, when set) is already done and is
skipped. Actions without a check use a verb that is idempotent by itself (``services enable``,
``add-iam-policy-binding``, ``kubectl apply``, ``run services replace``, converging API calls).
Placeholders resolved only in a real run: ``{PROJECT_NUMBER}``, and ``{SECRET:NAME}`` (a secret's
latest value) in a body.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploy import identities, render
from deploy.identities import (
    CLUSTER,
    FUNCTION,
    NAMESPACE,
    REPOSITORY,
    SECRETS,
    Grant,
    email,
)

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
METRICS_ADAPTER = (
    "https://raw.githubusercontent.com/GoogleCloudPlatform/k8s-stackdriver/master/"
    "custom-metrics-stackdriver-adapter/deploy/production/adapter_new_resource_model.yaml"
)
"""The Custom Metrics Stackdriver Adapter: the HPAs read the subscriptions' backlog through it."""
PUBSUB_AGENT = "serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
"""Pub/Sub's service agent: it forwards dead-lettered messages and acks the originals."""

Kind = Literal["gcloud", "kubectl", "api"]


@dataclass(frozen=True)
class Action:
    step: str
    kind: Kind
    argv: tuple[str, ...]
    """The command (gcloud, kubectl); for ``api``, (service, method)."""
    body: dict[str, Any] | None = None
    """The API request (``api``), or the manifest fed to ``kubectl apply -f -``."""
    check: tuple[str, ...] | None = None
    """A command that exits 0 when the action is already done; None: the verb is idempotent."""
    expect: str | None = None
    """With ``check``: done only if its output (stripped) is this."""
    files: dict[str, str] = field(default_factory=dict)
    """Files (path -> text) the action reads, written before it runs: rendered manifests."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Action:
        return cls(
            step=data["step"],
            kind=data["kind"],
            argv=tuple(data["argv"]),
            body=data["body"],
            check=None if data["check"] is None else tuple(data["check"]),
            expect=data["expect"],
            files=data["files"],
        )

    def line(self) -> str:
        """The action as one printable line (a shell-quoted command, or the API call)."""
        if self.kind == "api":
            return f"{'.'.join(self.argv)} {json.dumps(self.body, sort_keys=True)}"
        command = subprocess.list2cmdline(self.argv)
        if self.body is None:
            return command
        if self.kind == "kubectl":
            return f"{command} <<< {json.dumps(self.body)}"
        return f"{command}  # {json.dumps(self.body)}"


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
            actions.extend(_secrets(project, region, tag, work, secret_files))
        else:
            actions.extend(_STEP_BUILDERS[step](project, region, tag, work))
    return actions


def _g(project: str, *argv: str) -> tuple[str, ...]:
    return ("gcloud", *argv, f"--project={project}")


def _member(name: str, project: str) -> str:
    return f"serviceAccount:{email(name, project)}"


def _apis(project: str, region: str, tag: str, work: Path) -> list[Action]:
    return [Action("apis", "gcloud", _g(project, "services", "enable", *APIS))]


def _registry(project: str, region: str, tag: str, work: Path) -> list[Action]:
    location = f"--location={region}"
    return [
        Action(
            "registry",
            "gcloud",
            _g(
                project,
                "artifacts",
                "repositories",
                "create",
                REPOSITORY,
                "--repository-format=docker",
                location,
            ),
            check=_g(project, "artifacts", "repositories", "describe", REPOSITORY, location),
        ),
        *_resource_grants(project, region, f"repository:{REPOSITORY}", "registry"),
    ]


def _accounts(project: str, region: str, tag: str, work: Path) -> list[Action]:
    actions = []
    for name in identities.roles(project):
        actions.append(
            Action(
                "accounts",
                "gcloud",
                _g(project, "iam", "service-accounts", "create", name, f"--display-name={name}"),
                check=_g(project, "iam", "service-accounts", "describe", email(name, project)),
            )
        )
    for name, grants in identities.roles(project).items():
        for grant in grants:
            if grant.resource == "project":
                actions.append(_project_binding("accounts", project, _member(name, project), grant))
    # Dead-lettering: Pub/Sub's service agent publishes to jobs-dead and acks the originals.
    for role in ("roles/pubsub.publisher", "roles/pubsub.subscriber"):
        actions.append(_project_binding("accounts", project, PUBSUB_AGENT, Grant(role)))
    return actions


def _project_binding(step: str, project: str, member: str, grant: Grant) -> Action:
    return Action(
        step,
        "gcloud",
        (
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            project,
            f"--member={member}",
            f"--role={grant.role}",
            "--condition=None",
            "--quiet",
        ),
    )


def _resource_grants(project: str, region: str, resource: str, step: str) -> list[Action]:
    """The bindings on one resource, for every account granted a role on it."""
    kind, _, name = resource.partition(":")
    actions = []
    for account, grants in identities.roles(project).items():
        for grant in (g for g in grants if g.resource == resource):
            member, role = f"--member={_member(account, project)}", f"--role={grant.role}"
            argv: tuple[str, ...]
            if kind == "secret":
                argv = _g(project, "secrets", "add-iam-policy-binding", name, member, role)
            elif kind == "bucket":
                argv = _g(project, "storage", "buckets", "add-iam-policy-binding", f"gs://{name}")
                argv = (*argv, member, role)
            elif kind == "repository":
                argv = _g(
                    project,
                    "artifacts",
                    "repositories",
                    "add-iam-policy-binding",
                    name,
                    f"--location={region}",
                    member,
                    role,
                )
            elif kind == "function":
                # A gen2 function is a Cloud Run service: the invoker role is granted on it.
                argv = _g(
                    project,
                    "functions",
                    "add-invoker-policy-binding",
                    name,
                    f"--region={region}",
                    member,
                )
            else:
                raise ValueError(f"unknown resource {resource}")
            actions.append(Action(step, "gcloud", argv))
    return actions


SECRET_FILES = {
    "omni-api-keys": "{API_KEYS_FILE}",
    "omni-webhook-secrets": "{WEBHOOK_SECRETS_FILE}",
}
"""The secrets whose first version is a file a person made, and the placeholder that stands for
it in the plan until ``--api-keys-file`` / ``--webhook-secrets-file`` names it."""


def _secrets(
    project: str, region: str, tag: str, work: Path, secret_files: dict[str, str]
) -> list[Action]:
    actions = []
    for name in SECRETS:
        actions.append(
            Action(
                "secrets",
                "gcloud",
                _g(project, "secrets", "create", name, "--replication-policy=automatic"),
                check=_g(project, "secrets", "describe", name),
            )
        )
        actions.extend(_resource_grants(project, region, f"secret:{name}", "secrets"))
    # The sidecar's config is a file of the repository: a new version only when it changed.
    config = (render.ROOT / "cloudrun-monitoring.yaml").read_text()
    path = str(work / "cloudrun-monitoring.yaml")
    actions.append(
        Action(
            "secrets",
            "gcloud",
            _g(project, "secrets", "versions", "add", "omni-run-gmp-config", f"--data-file={path}"),
            check=_g(
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
                _g(
                    project,
                    "secrets",
                    "versions",
                    "add",
                    name,
                    f"--data-file={given or placeholder}",
                ),
                check=_g(project, "secrets", "versions", "describe", "latest", f"--secret={name}"),
            )
        )
    return actions


def _buckets(project: str, region: str, tag: str, work: Path) -> list[Action]:
    actions = []
    for bucket in (identities.models_bucket(project), identities.build_bucket(project)):
        actions.append(
            Action(
                "buckets",
                "gcloud",
                _g(
                    project,
                    "storage",
                    "buckets",
                    "create",
                    f"gs://{bucket}",
                    f"--location={region}",
                    "--uniform-bucket-level-access",
                    "--public-access-prevention",
                ),
                check=_g(project, "storage", "buckets", "describe", f"gs://{bucket}"),
            )
        )
        actions.extend(_resource_grants(project, region, f"bucket:{bucket}", "buckets"))
    return actions


def _pubsub(project: str, region: str, tag: str, work: Path) -> list[Action]:
    from emulators import provision

    # The dead-letter function is triggered through Eventarc (step deadletter), which makes its
    # own subscription on jobs-dead: no push subscription here.
    resources = provision.Resources(project=project)
    return [
        Action("pubsub", "api", ("pubsub", method), body=request)
        for method, request in provision.pubsub_requests(resources)
    ]


def _firestore(project: str, region: str, tag: str, work: Path) -> list[Action]:
    from emulators import provision

    database = Action(
        "firestore",
        "gcloud",
        _g(
            project,
            "firestore",
            "databases",
            "create",
            f"--location={region}",
            "--type=firestore-native",
        ),
        check=_g(project, "firestore", "databases", "describe", "--database=(default)"),
    )
    calls = provision.firestore_admin_requests(project, provision.firestore_spec())
    return [
        database,
        *(Action("firestore", "api", ("firestore", method), body=req) for method, req in calls),
    ]


def _deadletter(project: str, region: str, tag: str, work: Path) -> list[Action]:
    from emulators import deadletter_deploy
    from schemas.messages import DEFAULT_DEAD_LETTER_TOPIC

    source = work / "deadletter"
    files, staged = _staged_function(source)
    try:
        argv = deadletter_deploy.deploy_command(
            project,
            region,
            staged,
            DEFAULT_DEAD_LETTER_TOPIC,
            email("omni-deadletter", project),
            email("omni-deadletter-trigger", project),
        )
    finally:
        shutil.rmtree(staged)
    argv = [f"--source={source}" if a.startswith("--source=") else a for a in argv]
    label = next(a for a in argv if a.startswith("--update-labels="))
    digest = label.rpartition("=")[2]
    return [
        Action(
            "deadletter",
            "gcloud",
            tuple(argv),
            check=_g(
                project,
                "functions",
                "describe",
                FUNCTION,
                "--gen2",
                f"--region={region}",
                f"--format=value(labels.{deadletter_deploy.SOURCE_LABEL})",
            ),
            expect=digest,
            files=files,
        ),
        *_resource_grants(project, region, f"function:{FUNCTION}", "deadletter"),
    ]


def _staged_function(source: Path) -> tuple[dict[str, str], Path]:
    """The function's staged source as files under ``source``, and a temporary copy of it (the
    deploy command hashes the copy; nothing is written to ``source`` until the action runs)."""
    from emulators import deadletter_deploy

    staged = Path(tempfile.mkdtemp(prefix="omni-deadletter-"))
    deadletter_deploy.stage(staged)
    files = {
        str(source / path.relative_to(staged)): path.read_text()
        for path in sorted(staged.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    return files, staged


def _images(project: str, region: str, tag: str, work: Path) -> list[Action]:
    images = render.built_images(project, region, tag)
    build_account = email("omni-build", project)
    return [
        Action(
            "images",
            "gcloud",
            _g(
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
            _g(project, "container", "clusters", "create-auto", CLUSTER, location),
            check=_g(project, "container", "clusters", "describe", CLUSTER, location),
        ),
        Action(
            "cluster",
            "gcloud",
            _g(project, "container", "clusters", "get-credentials", CLUSTER, location),
        ),
    ]
    # Workload Identity: needs the cluster (it creates the PROJECT.svc.id.goog pool).
    for name in identities.WORKLOAD_IDENTITY:
        actions.append(
            Action(
                "cluster",
                "gcloud",
                _g(
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
        _project_binding("cluster", project, adapter, Grant("roles/monitoring.viewer")),
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
            _g(project, "run", "services", "replace", path, f"--region={region}"),
            files={path: render.cloud_run_service(project, region, tag)},
        )
    ]


def _monitoring(project: str, region: str, tag: str, work: Path) -> list[Action]:
    # The dashboards and alert policies are the monitoring package's (monitoring.plan/apply);
    # run.py hands the step to monitoring.apply, dry run included.
    return [Action("monitoring", "api", ("monitoring", "apply"), body={"project": project})]


_STEP_BUILDERS: dict[str, Any] = {
    "apis": _apis,
    "registry": _registry,
    "accounts": _accounts,
    "buckets": _buckets,
    "pubsub": _pubsub,
    "firestore": _firestore,
    "deadletter": _deadletter,
    "images": _images,
    "cluster": _cluster,
    "cloudrun": _cloudrun,
    "monitoring": _monitoring,
}
