"""The Dockerfiles build what the design card says, checked as files (no Docker engine here).

Each image's ``ImageSpec`` below is the design card; tests/support/dockerfile.py parses each
Dockerfile (continuation lines, comments and heredocs as BuildKit reads them) and ``problems``
lists every way an image departs from its spec: the extras it installs, where torch comes from,
the user, the command, the environment, the port, and every ``COPY`` source against the
repository and ``.dockerignore``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from emulators.localrun import ROOT
from tests.support.dockerfile import (
    CPU_TORCH_INDEX,
    ImageSpec,
    Instruction,
    arguments,
    dockerfile,
    environment,
    ignored,
    installed_extras,
    is_root,
    parse,
    pip_installs,
    problems,
    torch_pin,
)
from worker.settings import WorkerSettings

# -- the design card ------------------------------------------------------------------------------

INGRESS = ImageSpec(
    # The webhook sender (k8s/shared/webhooks.yaml) runs from this image too: its extra is httpx
    # and standardwebhooks, no ML (tests/integration/test_ingress_dependencies.py resolves it).
    extras=frozenset({"ingress", "webhooks"}),
    cmd=("gunicorn", "-c", "ingress/gunicorn.conf.py"),
    env={"HOST": "0.0.0.0", "PORT": "8080"},
    port=8080,
    # The reconciler CronJob, the webhook sender and compose's provisioning job run this image too.
    packages=frozenset({"schemas", "common", "ingress", "reconciler", "webhooks", "emulators"}),
    runtime_files=("ingress/gunicorn.conf.py",),
    cloud_run=True,
)
WORKER = ImageSpec(
    extras=frozenset({"worker"}),
    cmd=("python", "-m", "worker"),
    env={"WORKER_HTTP_HOST": "0.0.0.0", "WORKER_HTTP_PORT": str(WorkerSettings().http_port)},
    port=WorkerSettings().http_port,
    packages=frozenset({"schemas", "common", "worker"}),
    torch="cpu",
)
WORKER_CUDA = replace(WORKER, env={**WORKER.env, "WORKER_DEVICE": "cuda"}, torch="pypi")
IMAGES = {
    "ingress/Dockerfile": INGRESS,
    "worker/Dockerfile": WORKER,
    "worker/Dockerfile.cuda": WORKER_CUDA,
}


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(IMAGES))
def test_each_image_is_what_the_design_card_says(path: str) -> None:
    assert problems(dockerfile(path), IMAGES[path]) == []


def test_the_ingress_image_installs_only_its_two_extras_and_runs_gunicorn() -> None:
    stages = parse(dockerfile("ingress/Dockerfile"))
    assert installed_extras(stages) == {"ingress", "webhooks"}
    runtime = stages[-1]
    assert arguments(runtime.all("CMD")[-1])[1] == ["gunicorn", "-c", "ingress/gunicorn.conf.py"]
    assert not is_root(runtime.all("USER")[-1].args)
    assert "torch" not in "\n".join(pip_installs(stages))


def test_the_worker_images_differ_in_where_torch_comes_from() -> None:
    cpu = "\n".join(pip_installs(parse(dockerfile("worker/Dockerfile"))))
    cuda = "\n".join(pip_installs(parse(dockerfile("worker/Dockerfile.cuda"))))
    assert f"--index-url {CPU_TORCH_INDEX} {torch_pin()}" in cpu
    assert CPU_TORCH_INDEX not in cuda and torch_pin() in cuda


def test_the_worker_images_load_every_model_at_build_time_as_their_user() -> None:
    for path in ("worker/Dockerfile", "worker/Dockerfile.cuda"):
        runtime = parse(dockerfile(path))[-1]
        keywords = [i.keyword for i in runtime.instructions]
        (bake,) = [i for i in runtime.all("RUN") if "ADAPTERS" in i.heredoc]
        assert "for task, factory in ADAPTERS.items()" in bake.heredoc
        assert ".load()" in bake.heredoc
        assert keywords.index("USER") < runtime.instructions.index(bake), path
        compile(bake.heredoc, f"{path} (bake step)", "exec")  # at least valid Python


def test_the_parser_reads_continuations_comments_and_heredocs() -> None:
    stages = parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\n"
        "RUN pip install \\\n"
        "    # a comment inside a continuation\n"
        "    '.[ingress]'\n"
        "FROM $BASE\n"
        "RUN python - <<'EOF'\n"
        "print('FROM inside a heredoc is not an instruction')\n"
        "EOF\n"
        'ENV A=1 B="two words"\n'
        'CMD ["python", "-m", "worker"]\n'
    )
    assert [(s.image, s.name) for s in stages] == [
        ("python:3.11-slim", "build"),
        ("python:3.11-slim", None),
    ]
    assert stages[0].instructions == [Instruction("RUN", "pip install '.[ingress]'")]
    assert "FROM inside" in stages[1].all("RUN")[0].heredoc
    assert environment(stages[1]) == {"A": "1", "B": "two words"}
    assert installed_extras(stages) == {"ingress"}


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("tests/unit/test_x.py", "tests", True),
        ("worker/__pycache__/x.pyc", "**/__pycache__", True),
        ("__pycache__", "**/__pycache__", True),
        ("omni.egg-info/PKG-INFO", "*.egg-info", True),
        ("worker/omni.egg-info", "*.egg-info", False),  # `*` stays within one path element
        ("worker/tasks/embed.py", "worker/*.py", False),
        ("README.md", "*.md\n!README.md", False),
        ("pyproject.toml", "tests", False),
    ],
)
def test_dockerignore_matching(path: str, pattern: str, expected: bool) -> None:
    assert ignored(path, pattern) is expected


def test_dockerignore_keeps_what_pip_install_needs_and_drops_the_rest() -> None:
    dockerignore = (ROOT / ".dockerignore").read_text()
    for kept in ("pyproject.toml", "README.md", "schemas/jobs.py", "ingress/gunicorn.conf.py",
                 "worker/tasks/embed.py", "ingress/static/console/index.html",
                 "webhooks/__main__.py"):  # fmt: skip
        assert not ignored(kept, dockerignore), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/deploy/test_dockerfiles.py",
                    "bench/results/x.json", "test-artifacts/a", "docs/images.md",
                    "worker/__pycache__/main.cpython-311.pyc", "omni.egg-info/PKG-INFO",
                    ".mypy_cache/3.11", "node_modules/x"):  # fmt: skip
        assert ignored(dropped, dockerignore), dropped


# A broken Dockerfile fails the checker: one defect at a time, each named.
INGRESS_EXTRAS = "'.[ingress,webhooks]'"
BROKEN_INGRESS = [
    (INGRESS_EXTRAS, "'.[ingress,webhooks,worker]'", "not exactly ['ingress', 'webhooks']"),
    (INGRESS_EXTRAS, "'.[ingress,webhooks,dev]'", "not exactly ['ingress', 'webhooks']"),
    (INGRESS_EXTRAS, "'.[ingress]'", "installs the extras ['ingress'], not exactly"),
    (INGRESS_EXTRAS, "'.[webhooks]'", "installs the extras ['webhooks'], not exactly"),
    (INGRESS_EXTRAS, ".", "installs the extras [], not exactly ['ingress', 'webhooks']"),
    (INGRESS_EXTRAS, f"{INGRESS_EXTRAS} torch", "installs ML package(s) ['torch']"),
    ("USER 10001:10001", "USER root", "runs as root"),
    ("USER 10001:10001", "USER 0", "runs as root"),
    ("USER 10001:10001", "USER omni", "not numeric"),
    ("USER 10001:10001\n", "", "no USER"),
    ('CMD ["gunicorn", "-c", "ingress/gunicorn.conf.py"]', "CMD gunicorn", "exec form"),
    ('"-c", "ingress/gunicorn.conf.py"]', '"ingress:create_app()"]', "is not ['gunicorn'"),
    ("HOST=0.0.0.0", "HOST=127.0.0.1", "ENV HOST='127.0.0.1'"),
    ("EXPOSE 8080", "EXPOSE 8000", "does not EXPOSE 8080"),
    ("COPY schemas schemas", "COPY schemaz schemas", "schemaz does not exist"),
    ("COPY schemas schemas", "COPY schemas schemas\nCOPY tests tests", "excluded by .dockerignore"),
    ("pyproject.toml README.md ./", "pyproject.toml ./", "README.md is not copied"),
    ("COPY ingress ingress", "COPY ingress ingress\nCOPY worker worker", "copies the packages"),
    ("COPY webhooks webhooks\n", "", "copies the packages"),
    ("EXPOSE 8080", "EXPOSE 8080\nHEALTHCHECK CMD true", "HEALTHCHECK"),
    ("ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python:3.12-slim", "not Python 3.11"),
    ("# syntax=docker/dockerfile:1\n", "", "without `# syntax=docker/dockerfile:1`"),
]


@pytest.mark.parametrize(("old", "new", "problem"), BROKEN_INGRESS)
def test_a_broken_ingress_dockerfile_fails_the_checker(old: str, new: str, problem: str) -> None:
    text = dockerfile("ingress/Dockerfile")
    assert old in text
    found = problems(text.replace(old, new), INGRESS)
    assert any(problem in p for p in found), found


BROKEN_WORKER = [
    ("worker/Dockerfile", f"--index-url {CPU_TORCH_INDEX} ", "", "not installed from PyTorch's"),
    ("worker/Dockerfile", torch_pin(), "torch==1.0.0", "differ from pyproject's"),
    ("worker/Dockerfile", "'.[worker]'", "'.[worker,ingress]'", "not exactly ['worker']"),
    ("worker/Dockerfile", "WORKER_HTTP_HOST=0.0.0.0", "WORKER_HTTP_HOST=127.0.0.1", "ENV"),
    ("worker/Dockerfile", "USER 10001:10001", "USER root", "runs as root"),
    ("worker/Dockerfile", '"-m", "worker"]', '"-m", "ingress"]', "is not ['python'"),
    (
        "worker/Dockerfile.cuda",
        torch_pin(),
        f"--index-url {CPU_TORCH_INDEX} {torch_pin()}",
        "takes torch from the CPU-only index",
    ),
    ("worker/Dockerfile.cuda", "    WORKER_DEVICE=cuda", "    WORKER_DEVICE=auto", "WORKER_DEVICE"),
]


@pytest.mark.parametrize(("path", "old", "new", "problem"), BROKEN_WORKER)
def test_a_broken_worker_dockerfile_fails_the_checker(
    path: str, old: str, new: str, problem: str
) -> None:
    text = dockerfile(path)
    assert old in text
    found = problems(text.replace(old, new, 1), IMAGES[path])
    assert any(problem in p for p in found), found


def test_a_single_stage_dockerfile_fails_the_checker() -> None:
    text = "FROM python:3.11-slim\nRUN pip install '.[ingress]'\nCMD [\"gunicorn\"]\n"
    assert problems(text, INGRESS) == [
        "not multi-stage: build in one stage, copy the result into the runtime stage"
    ]
