"""The shape of the code base (docs/decisions.md, "Layout"): small modules, views that borrow
nothing from each other, one place that catches Google API errors, one ConfigError."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (
    "common",
    "deadletter",
    "deploy",
    "emulators",
    "ingress",
    "monitoring",
    "omniclient",
    "reconciler",
    "schemas",
    "webhooks",
    "worker",
)
"""Every package of ours outside tests/ and bench/."""
MAX_LINES = 420
"""A module past ~400 lines is asking to be split (../shared/STYLE.md, habit 4)."""
GOOGLE_ERRORS_HOME = "common/googleapi.py"
VIEW_MODULES = (
    "ingress/jobs/routes.py",
    "ingress/jobs/events.py",
    "ingress/batches/routes.py",
    "ingress/batches/reads.py",
    "ingress/webhooks/routes.py",
    "ingress/meta/console.py",
    "ingress/meta/health.py",
    "ingress/meta/openapi.py",
    "ingress/meta/tasks.py",
)
"""The ingress modules that register routes (a ``Blueprint`` or ``init_app``)."""


def _modules() -> Iterator[Path]:
    for package in SHIPPED:
        yield from sorted((ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _google_names(tree: ast.Module) -> set[str]:
    """Names bound in this module to Google API errors: ``gexc`` for
    ``google.api_core.exceptions``, the classes imported from it, and ``UNAVAILABLE``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "google.api_core":
            names |= {a.asname or a.name for a in node.names if a.name == "exceptions"}
        elif isinstance(node, ast.ImportFrom) and node.module == "google.api_core.exceptions":
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "common.googleapi":
            names |= {a.asname or a.name for a in node.names if a.name == "UNAVAILABLE"}
        elif isinstance(node, ast.Import):
            # ``import google.api_core.exceptions`` binds ``google``.
            names |= {
                a.asname or a.name.split(".")[0]
                for a in node.names
                if a.name.startswith("google.api_core")
            }
    return names


def _caught_google_errors(tree: ast.Module) -> list[int]:
    names = _google_names(tree)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            for sub in ast.walk(node.type):
                root = sub
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in names:
                    lines.append(node.lineno)
                    break
    return lines


def test_no_module_is_past_the_size_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_only_the_shared_module_catches_google_api_errors() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for path in _modules()
        if str(path.relative_to(ROOT)) != GOOGLE_ERRORS_HOME
        and (lines := _caught_google_errors(_tree(path)))
    }
    assert found == {}


def test_the_check_sees_each_way_of_naming_a_google_error() -> None:
    source = (
        "from google.api_core import exceptions as gexc\n"
        "from google.api_core.exceptions import NotFound\n"
        "from common.googleapi import UNAVAILABLE\n"
        "import google.api_core.exceptions\n"
        "try:\n    pass\nexcept gexc.Aborted:\n    pass\n"
        "except (KeyError, NotFound):\n    pass\n"
        "except UNAVAILABLE:\n    pass\n"
        "except google.api_core.exceptions.Conflict:\n    pass\n"
        "except KeyError:\n    pass\n"
    )
    assert _caught_google_errors(ast.parse(source)) == [7, 9, 11, 13]


def test_no_view_imports_another_view() -> None:
    views = {path[: -len(".py")].replace("/", ".") for path in VIEW_MODULES}
    borrowed = {}
    for path in VIEW_MODULES:
        tree = _tree(ROOT / path)
        imported = {
            node.module + ("." + alias.name if node.module in {"ingress", "ingress.meta"} else "")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        imported |= {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        if hits := sorted(imported & (views - {path[: -len(".py")].replace("/", ".")})):
            borrowed[path] = hits
    assert borrowed == {}


def test_every_view_module_is_listed() -> None:
    registers = {
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "ingress").rglob("*.py"))
        if "Blueprint(" in path.read_text() or "def init_app(" in path.read_text()
    }
    assert registers == set(VIEW_MODULES)


def test_there_is_one_config_error() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for path in _modules()
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ClassDef) and node.name == "ConfigError"
    ]
    assert defined == ["common/settings.py"]
