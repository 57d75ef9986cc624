"""The command lines every step of the plan builds on: a gcloud command in the project, a
project IAM binding, and the bindings on one resource for every account granted a role on it
(deploy/identities.py).
"""

from __future__ import annotations

from deploy import identities
from deploy.action import Action
from deploy.identities import Grant, email


def gcloud(project: str, *argv: str) -> tuple[str, ...]:
    return ("gcloud", *argv, f"--project={project}")


def account_member(name: str, project: str) -> str:
    return f"serviceAccount:{email(name, project)}"


def project_binding(step: str, project: str, member: str, grant: Grant) -> Action:
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


def resource_grants(project: str, region: str, resource: str, step: str) -> list[Action]:
    """The bindings on one resource, for every account granted a role on it."""
    kind, _, name = resource.partition(":")
    actions = []
    for account, grants in identities.roles(project).items():
        for grant in (g for g in grants if g.resource == resource):
            member, role = f"--member={account_member(account, project)}", f"--role={grant.role}"
            argv: tuple[str, ...]
            if kind == "secret":
                argv = gcloud(project, "secrets", "add-iam-policy-binding", name, member, role)
            elif kind == "bucket":
                argv = gcloud(
                    project, "storage", "buckets", "add-iam-policy-binding", f"gs://{name}"
                )
                argv = (*argv, member, role)
            elif kind == "repository":
                argv = gcloud(
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
                argv = gcloud(
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
