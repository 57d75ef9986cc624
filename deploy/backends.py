"""The plan's steps for what the services talk to: the Pub/Sub topics and subscriptions, the
Firestore database with its indexes and TTL policies (the requests provisioning sends, built by
emulators/pubsub_layout.py and emulators/firestore_indexes.py), and the dead-letter function
(emulators/deadletter_deploy.py's command).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from deploy.action import Action
from deploy.gcloud import gcloud, resource_grants
from deploy.identities import FUNCTION, email


def pubsub(project: str, region: str, tag: str, work: Path) -> list[Action]:
    from emulators import pubsub_layout

    # The dead-letter function is triggered through Eventarc (step deadletter), which makes its
    # own subscription on jobs-dead: no push subscription here.
    resources = pubsub_layout.Resources(project=project)
    return [
        Action("pubsub", "api", ("pubsub", method), body=request)
        for method, request in pubsub_layout.pubsub_requests(resources)
    ]


def firestore(project: str, region: str, tag: str, work: Path) -> list[Action]:
    from emulators import firestore_indexes

    database = Action(
        "firestore",
        "gcloud",
        gcloud(
            project,
            "firestore",
            "databases",
            "create",
            f"--location={region}",
            "--type=firestore-native",
        ),
        check=gcloud(project, "firestore", "databases", "describe", "--database=(default)"),
    )
    calls = firestore_indexes.firestore_admin_requests(project, firestore_indexes.firestore_spec())
    return [
        database,
        *(Action("firestore", "api", ("firestore", method), body=req) for method, req in calls),
    ]


def deadletter(project: str, region: str, tag: str, work: Path) -> list[Action]:
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
            check=gcloud(
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
        *resource_grants(project, region, f"function:{FUNCTION}", "deadletter"),
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
