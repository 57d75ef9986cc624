"""What each service's code calls, and so the roles its Google service account needs.

The table the deploy's grants are checked against, both ways (missing and extra). Each role names
the code that needs it: a module and a string found in it, which tests/deploy checks is still
there, so a role outlives its reason only until the call is removed. ``RESOURCE`` roles are
granted on one resource, not the project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    role: str
    resource: str
    """``project``, or ``secret:NAME``, ``bucket:NAME``, ``repository:NAME``, ``function:NAME``
    (``{project}`` is filled in)."""
    module: str
    marker: str
    reason: str


NEEDS: dict[str, tuple[Need, ...]] = {
    "omni-ingress": (
        Need("roles/pubsub.publisher", "project", "ingress/publisher.py", ".publish(", "jobs"),
        Need(
            "roles/pubsub.viewer",
            "project",
            "ingress/publisher.py",
            "get_topic(",
            "/health reads the topic; publisher grants only pubsub.topics.publish",
        ),
        Need(
            "roles/datastore.user", "project", "ingress/jobs/store.py", "firestore", "job documents"
        ),
        Need(
            "roles/cloudtrace.agent",
            "project",
            "ingress/app.py",
            "tracing.configure_tracing",
            "spans (OTEL_TRACES_EXPORTER=gcp)",
        ),
        Need(
            "roles/monitoring.metricWriter",
            "project",
            "cloudrun.yaml",
            "cloud-run-gmp-sidecar",
            "the Prometheus sidecar writes the ingress's metrics",
        ),
        *(
            Need(
                "roles/secretmanager.secretAccessor",
                f"secret:{name}",
                "cloudrun.yaml",
                f"secretName: {name}",
                "a mounted secret",
            )
            for name in ("omni-api-keys", "omni-webhook-secrets", "omni-run-gmp-config")
        ),
    ),
    "omni-worker": (
        Need("roles/pubsub.subscriber", "project", "worker/consumer.py", ".subscribe(", "pulls"),
        Need(
            "roles/pubsub.publisher",
            "project",
            "worker/main.py",
            "PublisherClient",
            "publishes the held chunk each ended chunk releases",
        ),
        Need("roles/datastore.user", "project", "worker/store.py", "firestore", "claims, results"),
        Need(
            "roles/cloudtrace.agent",
            "project",
            "worker/main.py",
            "tracing.configure_tracing",
            "spans",
        ),
        Need(
            "roles/storage.objectViewer",
            "bucket:{project}-omni-models",
            "k8s/overlays/cpu-predict/deployment.yaml",
            "gcsfuse.csi.storage.gke.io",
            "predict's models through Cloud Storage FUSE",
        ),
    ),
    "omni-reconciler": (
        Need("roles/pubsub.publisher", "project", "reconciler/__main__.py", "PublisherClient", ""),
        Need("roles/datastore.user", "project", "reconciler/sweep.py", "FieldFilter", "sweeps"),
    ),
    "omni-webhooks": (
        Need("roles/datastore.user", "project", "webhooks/outbox.py", "FieldFilter", "ledger"),
    ),
    "omni-deadletter": (
        Need("roles/pubsub.publisher", "project", "deadletter/main.py", ".publish(", "re-publish"),
        Need("roles/datastore.user", "project", "deadletter/main.py", "firestore.Client", ""),
    ),
    "omni-deadletter-trigger": (
        Need(
            "roles/run.invoker",
            "function:omni-deadletter",
            "emulators/deadletter_deploy.py",
            "--trigger-service-account",
            "Eventarc invokes the function as this account",
        ),
    ),
    "omni-build": (
        Need("roles/logging.logWriter", "project", "cloudbuild.yaml", "CLOUD_LOGGING_ONLY", ""),
        Need(
            "roles/artifactregistry.writer",
            "repository:omni",
            "cloudbuild.yaml",
            "images:",
            "pushes the images",
        ),
        Need(
            "roles/storage.objectViewer",
            "bucket:{project}-omni-build",
            "deploy/plan.py",
            "--gcs-source-staging-dir",
            "reads the staged source",
        ),
    ),
}

NO_CLOUD_CALLS = {
    "omni-webhooks": ("PublisherClient", "SubscriberClient", "cloudtrace", "configure_tracing"),
    "omni-reconciler": ("SubscriberClient", "configure_tracing"),
}
"""Calls a service's code must not make (its account has no role for them): files checked are
each service's package."""

REQUIRED_ENV: dict[str, dict[str, str]] = {
    "ingress": {
        "GOOGLE_CLOUD_PROJECT": "the default, omni-local, is the emulators' project",
        "API_KEYS_FILE": "without API_KEYS or API_KEYS_FILE the ingress refuses to start",
        "METRICS_PORT": "the collector sidecar scrapes it; unset, /metrics is on the public port",
        "HOST": "the default binds 127.0.0.1, which Cloud Run cannot reach",
    },
    "worker": {
        "GOOGLE_CLOUD_PROJECT": "the default, omni-local, is the emulators' project",
        "WORKER_TASKS": "empty means every task: a pool would load every model",
        "WORKER_HTTP_HOST": "the default binds 127.0.0.1: the kubelet's probes fail",
    },
    "webhooks": {
        "GOOGLE_CLOUD_PROJECT": "the default, omni-local, is the emulators' project",
        "WEBHOOK_SECRETS_FILE": "without secrets the sender can sign nothing",
        "WEBHOOK_HTTP_PORT": "unset, no /healthz for the liveness probe",
    },
    "reconciler": {
        "GOOGLE_CLOUD_PROJECT": "the default, omni-local, is the emulators' project",
    },
}
"""Variables each service reads whose absence is wrong in production: no default, or a default
only right on a laptop. Each is read by the service's settings (checked)."""

SETTINGS_MODULES = {
    "ingress": "ingress/settings.py",
    "worker": "worker/settings.py",
    "webhooks": "webhooks/settings.py",
    "reconciler": "reconciler/settings.py",
}
