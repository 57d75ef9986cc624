"""Deploy the dead-letter function to a real project (Cloud Run functions, gen2, an Eventarc
trigger on ``jobs-dead``), as part of ``python -m emulators.provision --deploy-deadletter``.

A function's source is a folder with ``main.py`` and ``requirements.txt`` at its top. Ours lives
in ``deadletter/main.py`` and imports the shared ``schemas`` and ``common`` packages, so the
source is *staged*: ``deadletter/main.py`` as ``main.py``, ``schemas/`` and ``common/`` beside it
(``PACKAGES``), and the requirements pinned from
``pyproject.toml`` (the core dependencies and the ``deadletter`` extra), so the function runs the
same versions as everything else. ``gcloud functions deploy`` creates or updates: idempotent.

Two identities, both explicit: the function runs as ``omni-deadletter`` (Firestore, and Pub/Sub to
re-publish), and its Eventarc trigger invokes it as ``omni-deadletter-trigger``, which needs
``roles/run.invoker`` on the function and nothing else (Pub/Sub events need no
``eventarc.eventReceiver``). Left to defaults, the trigger would run as the Compute Engine default
service account, which new projects no longer grant Editor. The deployed function carries a label
with the hash of its staged source, so ``python -m deploy`` skips a deploy that would change
nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = "omni-deadletter"
ENTRY_POINT = "on_dead_letter"
RUNTIME = "python311"
SOURCE_LABEL = "omni-source"
PACKAGES = ("schemas", "common")
"""Our packages the function imports, copied beside its ``main.py``."""
"""The label holding the first 16 hex digits of the staged source's SHA-256."""


def requirements() -> list[str]:
    """The function's pins: the project's core dependencies and its ``deadletter`` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["deadletter"]]


def stage(destination: Path) -> Path:
    """Lay the function's source out in ``destination``; returns it."""
    shutil.copy(ROOT / "deadletter" / "main.py", destination / "main.py")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (destination / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    return destination


def source_hash(source: Path) -> str:
    """A short digest of every file under the staged ``source``, names included."""
    digest = hashlib.sha256()
    files = [p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in sorted(files):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def deploy_command(
    project: str,
    region: str,
    source: Path,
    topic: str,
    service_account: str | None = None,
    trigger_service_account: str | None = None,
) -> list[str]:
    """The ``gcloud`` command that creates or updates the function."""
    argv = [
        "gcloud",
        "functions",
        "deploy",
        FUNCTION,
        "--gen2",
        f"--project={project}",
        f"--region={region}",
        f"--runtime={RUNTIME}",
        f"--source={source}",
        f"--entry-point={ENTRY_POINT}",
        f"--trigger-topic={topic}",
        f"--set-env-vars=GOOGLE_CLOUD_PROJECT={project}",
        # A failed invocation is retried by Pub/Sub: LiveAttempt and Firestore outages rely on it.
        "--retry",
        "--quiet",
    ]
    if service_account:
        argv.append(f"--service-account={service_account}")
    if trigger_service_account:
        argv.append(f"--trigger-service-account={trigger_service_account}")
    if source.is_dir():
        argv.append(f"--update-labels={SOURCE_LABEL}={source_hash(source)}")
    return argv


def deploy(
    project: str,
    region: str,
    topic: str,
    service_account: str | None,
    dry_run: bool = False,
    trigger_service_account: str | None = None,
) -> list[str]:
    """Stage the source and run the deploy (or, with ``dry_run``, only return the command)."""
    with tempfile.TemporaryDirectory(prefix="omni-deadletter-") as folder:
        argv = deploy_command(
            project,
            region,
            stage(Path(folder)),
            topic,
            service_account,
            trigger_service_account,
        )
        if not dry_run:
            subprocess.run(argv, check=True)
    return argv
