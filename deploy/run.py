"""Carry out a plan: print it (dry run), or run each action whose check says it is not done yet.

A dry run needs no credentials and touches no network: it never starts gcloud or kubectl, and it
prints the monitoring step through ``monitoring.apply(project, dry_run=True, out)``. A real run
goes through an ``Executor``; ``Subprocesses`` is the real one (gcloud and kubectl as
subprocesses, Pub/Sub and Firestore through emulators/provision.py's clients), and a unit test
passes a fake that records what ran.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol, TextIO

from deploy.action import Action

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 3600
"""Longest a single command may take, seconds (a cluster creation or an image build)."""
CHECK_TIMEOUT_S = 120
"""Longest a check (a describe) may take, seconds."""
PLACEHOLDER = re.compile(r"\{([A-Z_]+)(?::([\w-]+))?\}")


class DeployError(RuntimeError):
    """An action failed, or could not be carried out as planned."""


class Executor(Protocol):
    def done(self, action: Action) -> bool:
        """Whether the action's check finds it already done."""

    def apply(self, action: Action) -> None:
        """Carry the action out; raises DeployError when it fails."""


def dry_run(actions: list[Action], out: TextIO) -> None:
    """Print every command and API call, in order, without running any."""
    step = None
    for action in actions:
        if action.step != step:
            step = action.step
            out.write(f"\n# step {step}\n")
        if action.step == "monitoring":
            _monitoring(action, dry_run=True, out=out)
            continue
        if action.check is not None:
            out.write(f"#   skipped when: {subprocess.list2cmdline(action.check)}")
            out.write(_expected(action.expect))
        if action.files:
            folder = Path(os.path.commonpath(list(action.files)))
            folder = folder if len(action.files) > 1 else folder.parent
            out.write(f"#   writes {len(action.files)} rendered file(s) under {folder}\n")
        out.write(f"{action.kind}: {action.line()}\n")


def _expected(expect: str | None) -> str:
    if expect is None:
        return "\n"
    if len(expect) > 40 or "\n" in expect:
        return f" prints the file's {len(expect)} characters\n"
    return f" prints {expect}\n"


def execute(actions: list[Action], executor: Executor, out: TextIO) -> list[Action]:
    """Run every action not yet done, in order; returns those that ran."""
    ran = []
    for action in actions:
        if action.step == "monitoring" and isinstance(executor, Subprocesses):
            _monitoring(action, dry_run=False, out=out)
            ran.append(action)
            continue
        if action.check is not None and executor.done(action):
            out.write(f"done already: {action.line()[:160]}\n")
            continue
        out.write(f"running: {action.line()[:160]}\n")
        executor.apply(action)
        ran.append(action)
    return ran


def _monitoring(action: Action, *, dry_run: bool, out: TextIO) -> None:
    """The dashboards and alerts step, handed to the monitoring package's
    ``apply(project, dry_run, out)``, which prints its API calls in a dry run."""
    project = action.body["project"] if action.body else ""
    try:
        import monitoring  # type: ignore[import-not-found,unused-ignore]

        # getattr: the package is written alongside; until it has apply() the step says so.
        apply = getattr(monitoring, "apply")  # noqa: B009
    except (ImportError, AttributeError) as exc:
        if dry_run:
            out.write(f"# monitoring.apply({project!r}) is not available yet ({exc})\n")
            return
        raise DeployError("the monitoring package has no apply(): no dashboards or alerts") from exc
    apply(project, dry_run, out)


class Subprocesses:
    """The real executor: gcloud and kubectl as subprocesses, API calls through the clients."""

    def __init__(self, project: str) -> None:
        self._project = project
        self._resolved: dict[str, str] = {}
        self._clients: dict[str, Any] = {}

    def done(self, action: Action) -> bool:
        assert action.check is not None
        found = subprocess.run(
            self._argv(action.check),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
        if found.returncode != 0:
            return False
        return action.expect is None or found.stdout.strip() == action.expect

    def apply(self, action: Action) -> None:
        for path, text in action.files.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        if action.kind == "api":
            self._call(action)
            return
        stdin = None
        if action.kind == "kubectl" and action.body is not None:  # kubectl apply -f -
            stdin = self._resolve(json.dumps(action.body))
        done = subprocess.run(
            self._argv(action.argv),
            input=stdin,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise DeployError(f"{action.step}: {action.argv[:4]} exited {done.returncode}")

    def _argv(self, argv: tuple[str, ...]) -> list[str]:
        # On Windows gcloud is gcloud.cmd: run what PATH finds.
        program = shutil.which(argv[0]) or argv[0]
        return [program, *(self._resolve(arg) for arg in argv[1:])]

    def _resolve(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda match: self._value(match.group(1), match.group(2)), text)

    def _value(self, name: str, argument: str | None) -> str:
        key = f"{name}:{argument}"
        if key not in self._resolved:
            if name == "PROJECT_NUMBER":
                self._resolved[key] = self._output(
                    ("gcloud", "projects", "describe", self._project)
                    + ("--format=value(projectNumber)",)
                )
            elif name == "SECRET" and argument:
                self._resolved[key] = self._output(
                    ("gcloud", "secrets", "versions", "access", "latest")
                    + (f"--secret={argument}", f"--project={self._project}")
                )
            else:
                flag = name.lower().replace("_", "-")
                raise DeployError(f"{name}: the secret has no version yet; pass --{flag}")
        return self._resolved[key]

    def _output(self, argv: tuple[str, ...]) -> str:
        done = subprocess.run(
            self._argv(argv), capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise DeployError(f"{' '.join(argv[:4])}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _call(self, action: Action) -> None:
        from emulators import provision

        service, method = action.argv
        request = action.body or {}
        if service == "pubsub":
            if "pubsub" not in self._clients:
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                self._clients["pubsub"] = (
                    pubsub_v1.PublisherClient(),
                    pubsub_v1.SubscriberClient(),
                )
            publisher, subscriber = self._clients["pubsub"]
            provision.apply_pubsub(publisher, subscriber, method, request)
        elif service == "firestore":
            if "firestore" not in self._clients:
                from google.cloud import firestore_admin_v1

                self._clients["firestore"] = firestore_admin_v1.FirestoreAdminClient()
            provision.apply_firestore(self._clients["firestore"], method, request)
        else:
            raise DeployError(f"unknown API call {service}.{method}")
