"""The Google service accounts the deploy creates, and what each is granted.

One identity per part, each with only what its code calls. ``ROLES`` is the plan's source for the
grants; tests/deploy holds its own table of what each service's code needs (derived from the calls
it makes) and checks the two both ways, so a role added here without a reason, or a call added to
a service without its role, fails ``make test``.

A grant is on the project unless it names a resource: a secret (``secret:NAME``), a bucket
(``bucket:NAME``), the Artifact Registry repository (``repository:NAME``) or the dead-letter
function (``function:NAME``). Resource-level grants are made in the step that creates the
resource.
"""

from __future__ import annotations

from dataclasses import dataclass

REPOSITORY = "omni"
"""The Artifact Registry repository (Docker format) every image is pushed to."""
NAMESPACE = "omni"
"""The Kubernetes namespace of the workers, the reconciler and the webhook sender."""
CLUSTER = "omni"
"""The GKE Autopilot cluster's name."""
SERVICE = "omni-ingress"
"""The Cloud Run service (cloudrun.yaml)."""
FUNCTION = "omni-deadletter"
"""The dead-letter function (emulators/deadletter_deploy.py)."""
SECRETS = ("omni-api-keys", "omni-webhook-secrets", "omni-run-gmp-config")
"""Secret Manager secrets: API key hashes, webhook signing secrets, the Prometheus sidecar's
RunMonitoring config (cloudrun-monitoring.yaml)."""


def models_bucket(project: str) -> str:
    """The bucket the cpu-predict pool mounts read-only as MODEL_REPOSITORY (Cloud Storage FUSE)."""
    return f"{project}-omni-models"


def build_bucket(project: str) -> str:
    """The bucket ``gcloud builds submit`` stages the source in, read by the build's identity."""
    return f"{project}-omni-build"


@dataclass(frozen=True)
class Grant:
    role: str
    resource: str = "project"
    """``project``, or ``secret:NAME``, ``bucket:NAME``, ``repository:NAME``, ``function:NAME``."""


def roles(project: str) -> dict[str, tuple[Grant, ...]]:
    """Each service account the deploy creates (by its name before the @) and its grants."""
    models, build = models_bucket(project), build_bucket(project)
    return {
        "omni-ingress": (
            Grant("roles/pubsub.publisher"),
            Grant("roles/pubsub.viewer"),
            Grant("roles/datastore.user"),
            Grant("roles/cloudtrace.agent"),
            Grant("roles/monitoring.metricWriter"),
            *(Grant("roles/secretmanager.secretAccessor", f"secret:{name}") for name in SECRETS),
        ),
        "omni-worker": (
            Grant("roles/pubsub.subscriber"),
            Grant("roles/pubsub.publisher"),
            Grant("roles/datastore.user"),
            Grant("roles/cloudtrace.agent"),
            Grant("roles/storage.objectViewer", f"bucket:{models}"),
        ),
        "omni-reconciler": (
            Grant("roles/pubsub.publisher"),
            Grant("roles/datastore.user"),
        ),
        "omni-webhooks": (Grant("roles/datastore.user"),),
        "omni-deadletter": (
            Grant("roles/pubsub.publisher"),
            Grant("roles/datastore.user"),
        ),
        "omni-deadletter-trigger": (Grant("roles/run.invoker", f"function:{FUNCTION}"),),
        "omni-build": (
            Grant("roles/logging.logWriter"),
            Grant("roles/artifactregistry.writer", f"repository:{REPOSITORY}"),
            Grant("roles/storage.objectViewer", f"bucket:{build}"),
        ),
    }


WORKLOAD_IDENTITY = ("omni-worker", "omni-reconciler", "omni-webhooks")
"""Google service accounts a Kubernetes ServiceAccount of the same name acts as (k8s/shared/
serviceaccounts.yaml): each gets roles/iam.workloadIdentityUser for
``serviceAccount:PROJECT.svc.id.goog[omni/NAME]``."""


def email(name: str, project: str) -> str:
    return f"{name}@{project}.iam.gserviceaccount.com"
