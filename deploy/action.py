"""One step of the deploy as data (``Action``): a command or an API call, and how to see it is
already done. deploy/plan.py builds the list; deploy/run.py prints or runs it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
