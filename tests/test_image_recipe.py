"""The image recipe (deploy/Dockerfile, deploy/build_image.py), the kernel cache it
ships and the quick start, checked offline: tests/test_image.py builds and runs them."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from chart_tools import REPO, DockerIgnore, dockerfile_instructions

from fractalq import config
from fractalq.cli import main
from fractalq.cli.operator import MISSING_EXTRA
from fractalq.fractal import kernel_cache

DOCKERFILE = REPO / "deploy" / "Dockerfile"
BUILD_SCRIPT = REPO / "deploy" / "build_image.py"
EXAMPLE = REPO / "deploy" / "examples" / "fractaljob.yaml"
QUICKSTART = REPO / "deploy" / "quickstart.sh"


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_image", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Stage = tuple[str, str, list[tuple[str, str]]]  # name, base, instructions


def stages() -> list[Stage]:
    """The Dockerfile's stages in order: (name, base, instructions after FROM)."""
    found: list[Stage] = []
    for instruction, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            found.append((name.strip(), base.strip(), []))
        elif found:
            found[-1][2].append((instruction, args))
    return found


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction, args in instructions:
        if instruction == "ENV":
            values |= dict(re.findall(r"(\w+)=(\S+)", args))
    return values


# ---- the Dockerfile -------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    arguments = dict(
        args.split("=", 1)
        for instruction, args in instructions
        if instruction == "ARG" and "=" in args
    )
    assert arguments["PYTHON_IMAGE"] == "python:3.11-slim"  # any registry's, or the built base
    by_name = {name: (base, body) for name, base, body in stages()}
    # Built from the base: the installing stage and the runtime; the others from stages.
    assert {base for base, _ in by_name.values()} - set(by_name) == {"${PYTHON_IMAGE}"}
    assert by_name["runtime"][0] == "${PYTHON_IMAGE}"
    # `docker build` without --target makes fractalq's image; --target operator the operator's,
    # which is fractalq's plus one layer.
    assert stages()[-1][:2] == ("fractalq", "runtime")
    operator_base, operator_body = by_name["operator"]
    assert operator_base == "runtime"
    assert [i for i, _ in operator_body if i not in ("LABEL",)] == ["COPY"]

    _, runtime = by_name["runtime"]
    assert not any("apt-get install" in args for ins, args in runtime if ins == "RUN")
    assert [args for ins, args in runtime if ins == "COPY"] == [
        "--from=venv /opt/fractalq /opt/fractalq"
    ]
    users = [args for ins, args in runtime if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = [json.loads(args) for ins, args in runtime if ins == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1][0] == "fractalq"  # the installed console script
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "fractalq" in project["scripts"]

    # The kernels compiled into the venv at build time, copied at run time into a
    # writable NUMBA_CACHE_DIR under /tmp (the chart's emptyDir).
    environment = env_of(runtime)
    shipped = environment[config.KERNEL_CACHE_VARIABLE]
    assert environment["NUMBA_CACHE_DIR"].startswith("/tmp/")
    assert shipped.startswith("/opt/fractalq/")
    venv = " ".join(args for ins, args in by_name["venv"][1] if ins == "RUN")
    assert f"NUMBA_CACHE_DIR={shipped} $py -m fractalq.fractal.kernel_cache;" in venv
    assert "--require-cached" in venv
    assert "pip uninstall --quiet --yes pip setuptools" in venv
    # The operator's packages come from the operator extra, in its stage only.
    assert "operator" in project["optional-dependencies"]
    installing = " ".join(args for ins, args in by_name["install"][1] if ins == "RUN")
    assert "pip install --no-compile ." in installing and "operator" not in installing

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
    # BuildKit reads deploy/Dockerfile.dockerignore for deploy/Dockerfile (buildah is
    # given it with --ignorefile); the classic builder reads .dockerignore at the root
    # of the context. Check each one present.
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
        assert ignore.excluded("build/image/containers.conf")


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
    assert 'docker build -f deploy/Dockerfile -t "$IMAGE" .' in script
    assert 'docker build -f deploy/Dockerfile --target operator -t "$OPERATOR_IMAGE" .' in script
    assert 'kind load docker-image "$IMAGE" "$OPERATOR_IMAGE"' in script
    assert 'minikube image load "$IMAGE"' in script
    assert 'minikube image load "$OPERATOR_IMAGE"' in script
    assert "helm upgrade --install fractalq charts/fractalq" in script and "--wait" in script
    assert 'operator.image.repository="${OPERATOR_IMAGE%:*}"' in script
    assert f"fj/{example}" in script
    assert "--for=jsonpath='{.status.phase}'=Succeeded" in script
    for path in re.findall(r"\b(?:deploy|charts)/[\w./-]+", script):
        assert (REPO / path).exists(), path
    kind = yaml.safe_load((REPO / "deploy" / "kind-config.yaml").read_text())
    assert (kind["kind"], kind["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")


# ---- deploy/build_image.py ------------------------------------------------------------


def test_the_build_script_passes_pips_index_through(tmp_path: Path) -> None:
    script = build_script()
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    listing = "\n".join([
        f"global.extra-index-url='file://{index} https://mirror.example/simple'",
        "global.index-url='https://pypi.example/simple'",
        f"global.cert='{bundle}'",
        "install.index-url='https://install.example/simple'",
        f":env:.find-links='{wheels}'",
        "global.timeout='60'",  # not an index setting: left out
        "global.disable-pip-version-check='1'",
    ])  # fmt: skip
    settings = script.parse_pip_config(listing, {})
    assert settings == {
        "extra-index-url": f"file://{index} https://mirror.example/simple",
        "index-url": "https://install.example/simple",  # [install] over [global]
        "cert": str(bundle),
        "find-links": str(wheels),
    }
    folder = tmp_path / "conf"
    folder.mkdir()
    mounts = script.pip_mounts(settings, folder)
    conf = (folder / "pip.conf").read_text()
    assert conf.startswith("[global]\n") and f"cert = {bundle}\n" in conf
    assert mounts == [
        f"--volume={folder / 'pip.conf'}:/etc/pip.conf:ro",
        f"--volume={index.parent}:{index.parent}:ro",  # the index's page links to ../files
        f"--volume={bundle}:{bundle}:ro",
        f"--volume={wheels}:{wheels}:ro",
    ]
    assert script.pip_mounts({}, folder) == []
    # Never at, over or inside what the build writes (a find-links of /opt/wheels is
    # fine, one of /opt or /src/x is not).
    assert [script.in_the_way(p) for p in ("/opt", "/opt/fractalq/x", "/src/x", "/tmp", "/")] == [
        True, True, True, True, True,
    ]  # fmt: skip
    assert not any(script.in_the_way(p) for p in ("/opt/wheels", "/tmp/mirror", "/srv/x"))


def test_the_build_script_writes_the_machines_limits_only_when_lower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = build_script()
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)
    conf = script.containers_conf(tmp_path / "lower", (20000, 32768))
    assert conf is not None
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in conf.read_text()
    assert script.containers_conf(tmp_path / "as-podman", (1 << 20, 1 << 22)) is None
    nofile, nproc = script.machine_limits()
    assert 0 < nofile <= 1 << 20 and 0 < nproc <= 1 << 22
    monkeypatch.setenv("CONTAINERS_CONF", "/elsewhere/containers.conf")
    assert script.containers_conf(tmp_path / "given", (1024, 1024)) is None


def test_the_build_script_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    script = build_script()
    monkeypatch.setattr(script.shutil, "which", lambda tool: None)
    with pytest.raises(script.BuildError, match=r"^needs buildah podman \(on Debian: apt-get"):
        script.need("buildah", "podman")
    run = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--base" in run.stdout


# ---- the kernel cache ------------------------------------------------------------------


@pytest.fixture
def fresh_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_cache, "_seeded", False)


def shipped_cache(folder: Path) -> Path:
    for name, data in (("fractal_ab/fast._escape-1.py311.nbi", b"index"),
                       ("fractal_ab/fast._escape-1.py311.1.nbc", b"code")):  # fmt: skip
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.usefixtures("fresh_seed")
def test_seeding_copies_what_the_writable_cache_lacks_and_nothing_else(tmp_path: Path) -> None:
    shipped = shipped_cache(tmp_path / "shipped")
    writable = tmp_path / "numba"
    (writable / "fractal_ab").mkdir(parents=True)
    # An index numba already rewrote here (an entry for this CPU added): kept.
    (writable / "fractal_ab" / "fast._escape-1.py311.nbi").write_bytes(b"newer index")
    environ = {config.KERNEL_CACHE_VARIABLE: str(shipped)}
    assert kernel_cache.seed(str(writable), environ) == 1
    assert (writable / "fractal_ab" / "fast._escape-1.py311.nbi").read_bytes() == b"newer index"
    assert (writable / "fractal_ab" / "fast._escape-1.py311.1.nbc").read_bytes() == b"code"
    assert sorted(p.name for p in (writable / "fractal_ab").iterdir()) == [
        "fast._escape-1.py311.1.nbc",
        "fast._escape-1.py311.nbi",
    ]  # no partial file left behind
    (writable / "fractal_ab" / "fast._escape-1.py311.1.nbc").unlink()
    assert kernel_cache.seed(str(writable), environ) == 0  # once per process


@pytest.mark.usefixtures("fresh_seed")
def test_seeding_without_a_shipped_cache_does_nothing(tmp_path: Path) -> None:
    assert kernel_cache.seed(str(tmp_path / "numba"), {}) == 0
    environ = {config.KERNEL_CACHE_VARIABLE: str(tmp_path / "absent")}
    assert kernel_cache.seed(str(tmp_path / "numba"), environ) == 0
    assert not (tmp_path / "numba").exists()


@pytest.mark.usefixtures("fresh_seed")
def test_seeding_that_fails_is_logged_and_numba_compiles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shipped = shipped_cache(tmp_path / "shipped")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger=kernel_cache.__name__):
        copied = kernel_cache.seed(str(blocked), {config.KERNEL_CACHE_VARIABLE: str(shipped)})
    assert copied == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"compiled kernels not copied from {shipped} to {blocked}"
    ]


# ---- the operator extra -----------------------------------------------------------------


@pytest.mark.parametrize("module", ["kopf", "kubernetes"])
def test_the_operator_without_its_extra_says_so_in_one_line(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    assert main(["operator"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"fractalq operator: error: {MISSING_EXTRA}"]
