"""The GKE manifests (k8s/) render, are valid Kubernetes objects, and agree with the code they run.

No cluster here: ``kubectl kustomize`` renders every kustomization offline, and kubernetes-validate
checks each object against the OpenAPI schemas of one fixed Kubernetes version in strict mode, so
an unknown (misspelt) field is an error rather than something the API server would silently drop.
The rest reads the rendered objects the way the cluster would and checks them against the worker:
its settings, its shutdown, its health server and the task catalogue; and against the webhook
sender: its command, its secrets file, its shutdown and its network policy.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from emulators.localrun import ROOT
from schemas.messages import CHUNK_KIND, JOB_KIND, task_subscription
from schemas.tasks import TASKS
from tests.support.manifests import KUBECTL, kustomize
from webhooks import outbox
from webhooks.settings import SenderSettings
from worker.main import ABANDON_WAIT_S
from worker.settings import FIRESTORE_TIMEOUT_S, WorkerSettings

KUBERNETES_VERSION = "1.30"
"""The oldest minor the manifests promise to work on (the preStop sleep action needs 1.30)."""
K8S = ROOT / "k8s"
POOLS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
BACKLOG_METRIC = "pubsub.googleapis.com|subscription|num_undelivered_messages"
HELD_METRIC = "prometheus.googleapis.com|omni_worker_held_chunks|gauge"
"""omni_worker_held_chunks (worker/metrics.py) as Managed Service for Prometheus exports it."""
STARTUP_BUDGET_S = 300
"""Seconds a pod may take to load its models before the kubelet restarts it, at least."""
GPU_TASKS = {"embed", "similar"}
"""Tasks whose model can use the CUDA image's GPU (torch). Both images carry tensorflow-cpu
(worker/Dockerfile.cuda), so ``predict`` under WORKER_DEVICE=cuda would fail its start."""
CUSTOM_KINDS = {("monitoring.googleapis.com/v1", "PodMonitoring")}
"""Custom resources kubernetes-validate has no schema for; checked field by field below."""
NOT_PUBLIC = [
    ipaddress.IPv4Network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
]
"""What the webhook sender must not reach whatever its code does: the RFC 1918 ranges, link-local
(the metadata server) and the shared address space."""

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed (it comes with the Google Cloud CLI): "
    "cannot render the kustomize overlays in k8s/",
)

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Each kustomization rendered once: every pool overlay, ``shared`` and ``all`` (k8s/)."""
    out = {pool: kustomize(K8S / "overlays" / pool) for pool in POOLS}
    out["shared"] = kustomize(K8S / "shared")
    out["all"] = kustomize(K8S)
    return out


def the(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    (found,) = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    return found


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``) picks ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def webhooks_deployment(rendered: dict[str, list[Manifest]]) -> Manifest:
    return the(rendered["shared"], "Deployment", "omni-webhooks")


def webhooks_container(rendered: dict[str, list[Manifest]]) -> Manifest:
    containers: list[Manifest] = webhooks_deployment(rendered)["spec"]["template"]["spec"][
        "containers"
    ]
    (container,) = containers
    assert container["name"] == "webhooks"
    return container


def worker_container(deployment: Manifest) -> Manifest:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "worker"
    return container


def pod_environment(container: Manifest, shared: list[Manifest]) -> dict[str, str]:
    """The literal environment the container starts with: its ConfigMaps, then its own ``env``."""
    config_maps = {m["metadata"]["name"]: m for m in shared if m["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({item["name"]: item["value"] for item in container["env"] if "value" in item})
    return env


def pool_settings(rendered: dict[str, list[Manifest]], pool: str) -> WorkerSettings:
    """The worker's own reading of the pool's environment (raises if it is not a valid one)."""
    container = worker_container(the(rendered[pool], "Deployment"))
    return WorkerSettings.from_env(pod_environment(container, rendered["shared"]))


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def validation_errors(manifests: list[Manifest], *, strict: bool = True) -> list[str]:
    errors = []
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=strict)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            errors.append(
                f"{manifest['kind']}/{manifest['metadata']['name']} {where}: {exc.message}"
            )
    return errors


# -- rendering and validity -----------------------------------------------------------------------


def test_every_object_is_valid_for_the_fixed_kubernetes_version(
    rendered: dict[str, list[Manifest]],
) -> None:
    # The whole deployment holds every pool's and the shared objects (checked below), so
    # validating it once covers each kustomization.
    assert validation_errors(rendered["all"]) == []


def test_the_whole_deployment_is_shared_plus_every_pool_overlay(
    rendered: dict[str, list[Manifest]],
) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["shared", *(f"overlays/{pool}" for pool in POOLS)]
    parts = [m for name in ("shared", *POOLS) for m in rendered[name]]
    assert sorted(map(yaml.safe_dump, rendered["all"])) == sorted(map(yaml.safe_dump, parts))


def test_names_are_unique_and_every_reference_resolves(
    rendered: dict[str, list[Manifest]],
) -> None:
    everything = rendered["all"]
    keys = Counter((m["kind"], m["metadata"]["name"]) for m in everything)
    assert [key for key, count in keys.items() if count > 1] == []
    namespaced = [m for m in everything if m["kind"] != "Namespace"]
    assert {m["metadata"]["namespace"] for m in namespaced} == {"omni"}
    names = {kind: {n for k, n in keys if k == kind} for kind, _ in keys}

    pods = [m["spec"]["template"]["spec"] for m in everything if m["kind"] == "Deployment"]
    pods += [
        m["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for m in everything
        if m["kind"] == "CronJob"
    ]
    for pod in pods:
        assert pod["serviceAccountName"] in names["ServiceAccount"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in names["ConfigMap"]
            for item in container.get("env", []):
                # Secrets are created by the operator, not here: a missing one must not stop a pod.
                secret = item.get("valueFrom", {}).get("secretKeyRef")
                assert secret is None or secret["optional"] is True, item

    for hpa in (m for m in everything if m["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] in names["Deployment"]


@pytest.mark.parametrize("pool", POOLS)
def test_a_pool_is_one_deployment_with_its_own_autoscaler_and_disruption_budget(
    rendered: dict[str, list[Manifest]], pool: str
) -> None:
    manifests = rendered[pool]
    assert sorted(m["kind"] for m in manifests) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    deployment = the(manifests, "Deployment")
    assert deployment["metadata"]["name"] == f"omni-worker-{pool}"
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the count"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["pool"] == pool
    # Selectors pick this pool's pods only, never another pool's.
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        the(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
        assert selector["pool"] == pool
    assert (
        the(manifests, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == (deployment["metadata"]["name"])
    )


# -- routing and autoscaling ----------------------------------------------------------------------


def test_every_task_is_served_by_exactly_one_pool(rendered: dict[str, list[Manifest]]) -> None:
    served: Counter[str] = Counter()
    for pool in POOLS:
        settings = pool_settings(rendered, pool)
        # Explicit: an empty WORKER_TASKS would make a pool serve (and load) every task.
        assert settings.tasks, f"{pool} does not set WORKER_TASKS"
        served.update(settings.tasks)
    assert served == Counter(list(TASKS))


@pytest.mark.parametrize("pool", POOLS)
def test_a_pools_autoscaler_reads_the_backlog_of_exactly_its_subscriptions(
    rendered: dict[str, list[Manifest]], pool: str
) -> None:
    settings = pool_settings(rendered, pool)
    metrics = the(rendered[pool], "HorizontalPodAutoscaler")["spec"]["metrics"]

    read: dict[str, int] = {}
    held: dict[str, int] = {}
    for metric in metrics:
        assert metric["type"] == "External"
        name = metric["external"]["metric"]["name"]
        labels = metric["external"]["metric"]["selector"]["matchLabels"]
        target = metric["external"]["target"]
        assert target["type"] == "AverageValue"
        if name == HELD_METRIC:  # the held-back chunks, per task (worker/heldbacklog.py)
            held[labels["metric.labels.task"]] = int(target["averageValue"])
            continue
        assert name == BACKLOG_METRIC
        (subscription,) = labels.values()
        assert subscription not in read, "one metric per subscription"
        read[subscription] = int(target["averageValue"])
    # Every task's held chunks, at the same backlog per pod as its chunk subscription.
    assert held == {
        t: read[task_subscription(t, CHUNK_KIND, settings.subscription_prefix)]
        for t in settings.tasks
    }

    # Per subscription, what one busy pod holds leased of it.
    leased = {
        task_subscription(t, kind, settings.subscription_prefix): held
        for t in settings.tasks
        for kind, held in (
            (JOB_KIND, settings.leased_messages(t)),
            (CHUNK_KIND, settings.chunk_messages),
        )
    }
    assert read.keys() == leased.keys()
    for subscription, backlog_per_pod in read.items():
        # The metric counts messages pods hold leased too: a target at or below what one busy pod
        # leases would add pods with no backlog at all.
        assert backlog_per_pod > leased[subscription], subscription


@pytest.mark.parametrize("pool", POOLS)
def test_every_pool_keeps_one_warm_pod(rendered: dict[str, list[Manifest]], pool: str) -> None:
    """A choice, no longer a platform limit: GKE 1.37 and later scale an HPA with an External
    metric to zero (``minReplicas: 0``), but a pool at zero makes a lone job wait for a node and a
    model load (minutes for a GPU node), so every pool keeps one warm pod (k8s/base/hpa.yaml)."""
    spec = the(rendered[pool], "HorizontalPodAutoscaler")["spec"]
    assert spec["minReplicas"] == 1
    assert spec["maxReplicas"] > spec["minReplicas"]


# -- the pod and the worker it runs ---------------------------------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_the_grace_period_covers_the_workers_whole_shutdown(
    rendered: dict[str, list[Manifest]], pool: str
) -> None:
    settings = pool_settings(rendered, pool)
    pod = the(rendered[pool], "Deployment")["spec"]["template"]["spec"]
    pre_stop_s = worker_container(the(rendered[pool], "Deployment"))["lifecycle"]["preStop"][
        "sleep"
    ]["seconds"]
    # preStop runs inside the grace period; then WORKER_GRACE_S for jobs in hand, ABANDON_WAIT_S
    # for the rest to release themselves and nack, and the last settle writes' Firestore timeout.
    shutdown_s = pre_stop_s + settings.grace_s + ABANDON_WAIT_S + FIRESTORE_TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] > shutdown_s
    assert pre_stop_s <= 5, "a pull worker needs no traffic drain; keep the preStop short"


@pytest.mark.parametrize("pool", POOLS)
def test_probes_reach_the_workers_health_server_and_allow_for_model_loading(
    rendered: dict[str, list[Manifest]], pool: str
) -> None:
    settings = pool_settings(rendered, pool)
    container = worker_container(the(rendered[pool], "Deployment"))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert settings.http_host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == settings.http_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in ("/readyz", "/healthz")
    assert startup["failureThreshold"] * startup["periodSeconds"] >= STARTUP_BUDGET_S


@pytest.mark.parametrize("pool", POOLS)
def test_gpu_pools_request_a_gpu_and_insist_on_cuda_and_cpu_pools_stay_off_it(
    rendered: dict[str, list[Manifest]], pool: str
) -> None:
    gpu = pool.startswith("gpu-")
    settings = pool_settings(rendered, pool)
    pod = the(rendered[pool], "Deployment")["spec"]["template"]["spec"]
    container = worker_container(the(rendered[pool], "Deployment"))
    resources = container["resources"]

    assert settings.device == ("cuda" if gpu else "cpu")
    assert ("nvidia.com/gpu" in resources["limits"]) is gpu
    assert ("cloud.google.com/gke-accelerator" in pod.get("nodeSelector", {})) is gpu
    assert container["image"].split(":")[0].endswith("/worker-cuda" if gpu else "/worker")
    if gpu:
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert set(settings.tasks) <= GPU_TASKS
    # Inside a container the worker would count the node's CPUs; it must use the pod's.
    assert settings.torch_threads == cpu_cores(resources["requests"]["cpu"])
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


def test_placeholders_are_whole_words_that_a_word_bounded_substitution_fills(
    rendered: dict[str, list[Manifest]],
) -> None:
    """``PROJECT``, ``REGION`` and ``TAG`` stand for the project, the region and the images' tag
    (python -m deploy fills them). GOOGLE_CLOUD_PROJECT contains ``PROJECT``, so only a
    whole-word substitution is safe (k8s/README.md)."""
    text = yaml.safe_dump_all(rendered["all"])
    filled = re.sub(r"\bREGION\b", "europe-west1", re.sub(r"\bPROJECT\b", "my-project", text))
    filled = re.sub(r"\bTAG\b", "abc1234", filled)
    documents = [doc for doc in yaml.safe_load_all(filled) if doc]

    assert re.search(r"\b(PROJECT|REGION|TAG)\b", filled) is None
    assert the(documents, "ConfigMap")["data"]["GOOGLE_CLOUD_PROJECT"] == "my-project"
    images = {
        container["image"]
        for m in documents
        if m["kind"] == "Deployment"
        for container in m["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "europe-west1-docker.pkg.dev/my-project/omni/worker:abc1234",
        "europe-west1-docker.pkg.dev/my-project/omni/worker-cuda:abc1234",
        "europe-west1-docker.pkg.dev/my-project/omni/ingress:abc1234",  # the webhook sender
    }


def test_every_pod_uses_workload_identity_no_kubernetes_token_and_no_root(
    rendered: dict[str, list[Manifest]],
) -> None:
    accounts = {
        m["metadata"]["name"]: m["metadata"].get("annotations", {})
        for m in rendered["shared"]
        if m["kind"] == "ServiceAccount"
    }
    cronjob = the(rendered["shared"], "CronJob")
    pods = [cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    pods += [the(rendered[pool], "Deployment")["spec"]["template"]["spec"] for pool in POOLS]
    pods.append(webhooks_deployment(rendered)["spec"]["template"]["spec"])
    for pod in pods:
        google_account = accounts[pod["serviceAccountName"]]["iam.gke.io/gcp-service-account"]
        assert google_account.endswith(".iam.gserviceaccount.com")
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_network_policy_lets_in_only_the_metrics_scraper_and_out_only_dns_metadata_and_tls(
    rendered: dict[str, list[Manifest]],
) -> None:
    policy = the(rendered["shared"], "NetworkPolicy", "omni")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    templates = [the(rendered[pool], "Deployment")["spec"]["template"] for pool in POOLS]
    templates.append(the(rendered["shared"], "CronJob")["spec"]["jobTemplate"]["spec"]["template"])
    for template in templates:
        assert selects(policy["podSelector"], template["metadata"]["labels"])
    # The webhook sender has its own, narrower policy; policies add up, so this one must not
    # pick it as well.
    sender = webhooks_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert not selects(policy["podSelector"], sender)

    (ingress,) = policy["ingress"]
    (source,) = ingress["from"]
    assert source == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gke-gmp-system"}}
    }
    ports = {pool_settings(rendered, pool).http_port for pool in POOLS}
    assert [port["port"] for port in ingress["ports"]] == sorted(ports)

    egress_ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 80, 988, 443}


def test_pod_monitoring_scrapes_every_pools_metrics_port(
    rendered: dict[str, list[Manifest]],
) -> None:
    monitoring = the(rendered["shared"], "PodMonitoring", "omni-worker")
    assert (monitoring["apiVersion"], monitoring["kind"]) in CUSTOM_KINDS
    selector = monitoring["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitoring["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for pool in POOLS:
        deployment = the(rendered[pool], "Deployment")
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert endpoint["port"] in {p["name"] for p in worker_container(deployment)["ports"]}


# -- the webhook sender ----------------------------------------------------------------------------


def sender_settings(rendered: dict[str, list[Manifest]]) -> SenderSettings:
    """The sender's own reading of its pod's environment (raises if it is not a valid one)."""
    return SenderSettings.from_env(
        pod_environment(webhooks_container(rendered), rendered["shared"])
    )


def test_the_webhook_sender_runs_from_the_ingress_image_as_two_replicas(
    rendered: dict[str, list[Manifest]],
) -> None:
    deployment = webhooks_deployment(rendered)
    pod = deployment["spec"]["template"]["spec"]
    container = webhooks_container(rendered)
    reconciler = the(rendered["shared"], "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    (reconciler_container,) = reconciler["spec"]["containers"]

    assert container["command"] == ["python", "-m", "webhooks"]
    assert container["image"] == reconciler_container["image"]
    assert container["image"].split(":")[0].endswith("/ingress")
    # Attempts are claimed in Firestore transactions, so replicas may run side by side.
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "omni-webhooks"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Its one port serves /healthz (the liveness probe) and /metrics (scraped).
    (port,) = container["ports"]
    assert port["containerPort"] == sender_settings(rendered).http_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    monitoring = the(rendered["shared"], "PodMonitoring", "omni-webhooks")
    assert selects(
        monitoring["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    (endpoint,) = monitoring["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert (
        container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    )
    budget = the(rendered["shared"], "PodDisruptionBudget", "omni-webhooks")["spec"]
    assert selects(budget["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert budget["maxUnavailable"] < deployment["spec"]["replicas"]


def test_the_webhook_sender_reads_its_signing_secrets_from_a_mounted_secret(
    rendered: dict[str, list[Manifest]],
) -> None:
    pod = webhooks_deployment(rendered)["spec"]["template"]["spec"]
    container = webhooks_container(rendered)
    settings = sender_settings(rendered)

    assert settings.secrets == "", "no secret in plain env"
    assert settings.allow_private is False, "WEBHOOK_ALLOW_PRIVATE is for development only"
    assert settings.secrets_file is not None
    path = Path(settings.secrets_file)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "omni-webhook-secrets"
    assert path.name in {item["path"] for item in volume["secret"]["items"]}
    # Without its secrets the sender can sign nothing: the pod waits for the Secret.
    assert volume["secret"].get("optional", False) is False


def test_the_grace_period_covers_the_webhook_senders_shutdown(
    rendered: dict[str, list[Manifest]],
) -> None:
    settings = sender_settings(rendered)
    pod = webhooks_deployment(rendered)["spec"]["template"]["spec"]
    # SIGTERM stops looking; the look in progress ends (one Firestore call), then the attempts in
    # hand: the payload read, the connect and the response (WEBHOOK_TIMEOUT_S each), the write.
    shutdown_s = outbox.TIMEOUT_S + outbox.TIMEOUT_S + 2 * settings.timeout_s + outbox.TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] > shutdown_s
    # Cut off by SIGKILL, an attempt is sent again only when its lease ends.
    assert settings.lease_s >= pod["terminationGracePeriodSeconds"]


def test_the_webhook_senders_network_policy_lets_only_the_scraper_in_and_out_only_to_public_tls(
    rendered: dict[str, list[Manifest]],
) -> None:
    labels = webhooks_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    policies = [m for m in rendered["shared"] if m["kind"] == "NetworkPolicy"]
    (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
    spec = policy["spec"]
    assert policy["metadata"]["name"] == "omni-webhooks"
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (scrape,) = spec["ingress"]
    assert scrape["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gke-gmp-system"}}}
    ]
    assert [p["port"] for p in scrape["ports"]] == [sender_settings(rendered).http_port]

    for rule in spec["egress"]:
        ports = {port["port"] for port in rule["ports"]}
        if "to" not in rule:
            assert ports == {53}, "only DNS may go to any address"
            continue
        for peer in rule["to"]:
            block = peer["ipBlock"]
            network = ipaddress.IPv4Network(block["cidr"])
            if network.prefixlen == 32:  # the metadata server, on its own ports only
                assert network.subnet_of(ipaddress.IPv4Network("169.254.0.0/16"))
                assert ports <= {80, 988}
                continue
            assert ports == {443}
            excepted = [ipaddress.IPv4Network(cidr) for cidr in block.get("except", [])]
            for private in NOT_PUBLIC:
                if network.overlaps(private):
                    assert any(private.subnet_of(e) for e in excepted), (block, private)
    public_tls = [
        peer["ipBlock"]
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if {port["port"] for port in rule["ports"]} == {443}
    ]
    assert [block["cidr"] for block in public_tls] == ["0.0.0.0/0"]


# -- the validator itself -------------------------------------------------------------------------


BROKEN_PATCHES = {
    "a wrong type": ("replicas", 'spec:\n  replicas: "two"\n'),
    "a misspelt field": (
        "terminationGracePeriod",
        "spec:\n  template:\n    spec:\n      terminationGracePeriod: 45\n",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PATCHES))
def test_a_broken_overlay_fails_validation(tmp_path: Path, case: str) -> None:
    field, patch = BROKEN_PATCHES[case]
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    overlay = copy / "overlays" / POOLS[0]
    (overlay / "broken.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: omni-worker\n" + patch
    )
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["patches"].append({"path": "broken.yaml"})
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    errors = validation_errors(kustomize(overlay))

    assert len(errors) == 1
    assert errors[0].startswith(f"Deployment/omni-worker-{POOLS[0]}")
    assert field in errors[0]


def test_only_strict_validation_catches_a_misspelt_field() -> None:
    deployment = the(kustomize(K8S / "overlays" / POOLS[0]), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45

    assert validation_errors([deployment], strict=False) == []
    assert len(validation_errors([deployment], strict=True)) == 1
