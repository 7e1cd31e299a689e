"""The image recipe (deploy/Dockerfile, its .dockerignore) and the quick start, offline.

The Helm chart's tests are in tests/chart/.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from chart_tools import REPO, DockerIgnore, dockerfile_instructions

DOCKERFILE = REPO / "deploy" / "Dockerfile"
EXAMPLE = REPO / "deploy" / "examples" / "fractaljob.yaml"
QUICKSTART = REPO / "deploy" / "quickstart.sh"


# ---- image and quick start ------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    arguments = dict(
        args.split("=", 1)
        for instruction, args in instructions
        if instruction == "ARG" and "=" in args
    )
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], args.split()[0])
        for instruction, args in instructions
        if instruction == "FROM"
    ]
    assert len(bases) >= 2, "multi-stage: build in one stage, copy the virtualenv"
    assert set(bases) == {"python:3.11-slim"}

    final = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    assert not any("apt-get install" in args for ins, args in final if ins == "RUN")
    assert any(ins == "COPY" and args.startswith("--from=") for ins, args in final)

    users = [args for ins, args in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = [json.loads(args) for ins, args in final if ins == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1][0] == "fractalq"  # the installed console script
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "fractalq" in project["scripts"]

    # Every COPY from the build context exists, including the folders that the
    # package's links (fractalq/coordinator -> ../coordinator, ...) point to.
    sources: list[str] = []
    for instruction, args in instructions:
        if instruction == "COPY" and not args.startswith("--from="):
            parts = args.split()
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    copied = {Path(s.rstrip("/")).as_posix() for s in sources}
    for link in (REPO / "fractalq").iterdir():
        if link.is_symlink():
            target = link.resolve().relative_to(REPO).as_posix()
            assert target in copied, f"fractalq/{link.name} -> {target} is not copied"
    # `pip install .` needs the project file and the readme it names.
    assert {"pyproject.toml", project["readme"]} <= copied


def test_dockerignore_keeps_what_the_image_needs() -> None:
    # BuildKit reads deploy/Dockerfile.dockerignore for deploy/Dockerfile; the classic
    # builder reads .dockerignore at the root of the context. Check each one present.
    files = [
        p
        for p in (DOCKERFILE.with_name("Dockerfile.dockerignore"), REPO / ".dockerignore")
        if p.exists()
    ]
    assert files
    sources = [
        p
        for instruction, args in dockerfile_instructions(DOCKERFILE.read_text())
        if instruction == "COPY" and not args.startswith("--from=")
        for p in args.split()[:-1]
    ]
    for ignore_file in files:
        ignore = DockerIgnore.read(ignore_file)
        for source in sources:
            path = REPO / source
            needed = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            )
            assert needed, source
            for file in needed:
                relative = file.relative_to(REPO).as_posix()
                assert not ignore.excluded(relative), f"{ignore_file.name} leaves out {relative}"
        # And it keeps the context small: no VCS data, virtualenvs, caches or tests.
        for unwanted in (".git/HEAD", ".venv/bin/python", "tests/test_chart.py", ".tools/x/helm"):
            assert ignore.excluded(unwanted), f"{ignore_file.name} lets {unwanted} in"
        assert ignore.excluded("fractalq/__pycache__/config.cpython-311.pyc")


def test_dockerignore_rules() -> None:
    ignore = DockerIgnore(["*", "!src/", "**/*.pyc", "docs/**/draft?.md"])
    assert ignore.excluded("README.md")
    assert not ignore.excluded("src/a/b.py")
    assert ignore.excluded("src/a/b.pyc")
    assert not DockerIgnore(["docs/**/draft?.md"]).excluded("docs/a/draft10.md")
    assert DockerIgnore(["docs/**/draft?.md"]).excluded("docs/a/b/draft1.md")


def test_quick_start() -> None:
    subprocess.run(["bash", "-n", str(QUICKSTART)], check=True)
    script = QUICKSTART.read_text()
    example = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    assert "docker build -f deploy/Dockerfile" in script
    assert "kind load docker-image" in script and "minikube image load" in script
    assert "helm upgrade --install fractalq charts/fractalq" in script and "--wait" in script
    assert f"fj/{example}" in script
    assert "--for=jsonpath='{.status.phase}'=Succeeded" in script
    for path in re.findall(r"\b(?:deploy|charts)/[\w./-]+", script):
        assert (REPO / path).exists(), path
    kind = yaml.safe_load((REPO / "deploy" / "kind-config.yaml").read_text())
    assert (kind["kind"], kind["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
