#!/usr/bin/env python3
"""Build fractalq's images from deploy/Dockerfile with buildah, no registry needed.

    deploy/build_image.py             # localhost/fractalq:dev, localhost/fractalq-operator:dev
    deploy/build_image.py --tag 0.1.0 --only fractalq
    deploy/build_image.py --base docker.io/library/python:3.11-slim     # a registry's base

Without --base the base image is made here from Debian's own packages: bookworm with
its updates and security suites, python3, venv, passwd and the CA certificates, no
documentation (mmdebstrap), imported with podman as localhost/fractalq-base:bookworm
and kept for the next build (--rebuild-base makes it again). buildah then builds the
Dockerfile's targets, and the script prints each image's size and the time taken.

pip inside the build uses the index this machine's pip uses: the index settings that
``pip config list`` shows (files and PIP_* variables) are written to a pip.conf that is
mounted read-only at /etc/pip.conf during the build, and the local files and folders
they name (a CA bundle, a constraints file, a local index) are mounted read-only at
their own paths. None of it is written into the images or their history, and with no
such settings nothing is mounted.

Where this machine allows a container fewer open files or processes than podman's
defaults (a million each), the script writes a containers.conf with the machine's own
limits, uses it, and says how to point podman at it (CONTAINERS_CONF); a
CONTAINERS_CONF already set is used as it is.

Needs buildah and podman, and mmdebstrap (as root, or with subordinate ids) unless
--base is given.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"
IGNOREFILE = REPO / "deploy" / "Dockerfile.dockerignore"
# Each image: its Dockerfile target and the suffix of its name.
TARGETS = {"fractalq": "", "operator": "-operator"}

BASE_IMAGE = "localhost/fractalq-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# libstdc++6: numpy, grpcio and llvmlite wheels link to it.
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python-is-python3",
    "libstdc++6",
    "passwd",
    "ca-certificates",
)
# Nothing under these is needed in a container.
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)

# pip's settings that say where packages come from and how to reach them.
PIP_KEYS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "no-index",
    "trusted-host",
    "cert",
    "client-cert",
    "constraint",
    "default-timeout",
    "retries",
)
# Later sections win, as in pip: the [install] section over [global], PIP_* over both.
PIP_SECTIONS = ("global", "install", ":env:")
# Paths the build writes: nothing is mounted at, above or inside them; and its
# scratch space, which may hold a mount but not be covered by one.
BUILD_PATHS = (
    "/opt/fractalq",
    "/opt/operator-layer",
    "/opt/site-packages-path",
    "/src",
    "/etc/pip.conf",
)
SCRATCH_PATHS = ("/tmp",)

# podman's limits for a container unless told otherwise; runc refuses to start one
# whose limits are above what the machine allows.
PODMAN_NOFILE = 1 << 20
PODMAN_NPROC = 1 << 22


class BuildError(Exception):
    """A step that cannot go on; the message says what to do."""


def say(message: str) -> None:
    print(f"build_image: {message}", flush=True)


def run(command: list[str], **kwargs: object) -> None:
    say("$ " + shlex.join(command))
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        names = " ".join(missing)
        raise BuildError(f"needs {names} (on Debian: apt-get install {names})")


# ---- pip's index, passed through -----------------------------------------------


def pip_settings() -> dict[str, str]:
    """The host's pip settings of PIP_KEYS, as ``pip config list`` merges them."""
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    if found.returncode != 0:
        say("no pip here to ask for its configuration: the build uses pip's defaults")
        return {}
    return parse_pip_config(found.stdout, os.environ)


def parse_pip_config(listing: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of PIP_KEYS in ``pip config list``'s output, as pip would use them."""
    by_section: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        name, equals, quoted = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not (equals and dot) or key not in PIP_KEYS:
            continue
        try:
            value = ast.literal_eval(quoted)
        except (SyntaxError, ValueError):
            continue
        by_section.setdefault(section, {})[key] = str(value)
    settings: dict[str, str] = {}
    for section in PIP_SECTIONS:
        settings.update(by_section.get(section, {}))
    # pip's own HTTP library also trusts these when pip names no bundle.
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if "cert" not in settings and environ.get(variable):
            settings["cert"] = environ[variable]
    return settings


def local_path(value: str) -> Path | None:
    """The local file or folder a pip setting names, if it names one that exists."""
    if value.startswith("file:"):
        path = Path(unquote(urlparse(value).path))
        # An index page links to its files relative to itself (../../files/...):
        # the folder that holds the index's root goes in with it.
        if path.is_dir() and path.name == "simple":
            path = path.parent
    elif value.startswith("/"):
        path = Path(value)
    else:
        return None
    return path if path.exists() else None


def in_the_way(path: str) -> bool:
    """Whether a mount at ``path`` would hide or change what the build writes."""
    covers = any(
        p == path or p.startswith(path.rstrip("/") + "/") for p in BUILD_PATHS + SCRATCH_PATHS
    )
    return covers or any(path.startswith(p + "/") for p in BUILD_PATHS)


def pip_mounts(settings: dict[str, str], folder: Path) -> list[str]:
    """``--volume`` arguments: the pip.conf of ``settings`` and the paths it names."""
    if not settings:
        return []
    conf = folder / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    conf.chmod(0o644)  # read by the build's root, whose id may be mapped
    mounts = {str(conf): "/etc/pip.conf"}
    for value in settings.values():
        for part in value.split():
            path = local_path(part)
            if path is None:
                continue
            if in_the_way(str(path)):
                say(f"not mounting {path}: the build uses that path itself")
                continue
            mounts[str(path)] = str(path)
    for source, target in mounts.items():
        say(f"pip's settings: {source} mounted read-only at {target}")
    return [f"--volume={source}:{target}:ro" for source, target in mounts.items()]


# ---- container limits --------------------------------------------------------------


def machine_limits() -> tuple[int, int]:
    """The most open files and processes this machine lets a container have."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    infinite = resource.RLIM_INFINITY
    nofile = PODMAN_NOFILE if nofile == infinite else min(nofile, PODMAN_NOFILE)
    nproc = PODMAN_NPROC if nproc == infinite else min(nproc, PODMAN_NPROC)
    with contextlib.suppress(OSError, ValueError):
        # Also runc's ceiling for the process limit on some kernels.
        nproc = min(nproc, int(Path("/proc/sys/kernel/pid_max").read_text()))
    return nofile, nproc


def containers_conf(folder: Path, limits: tuple[int, int] | None = None) -> Path | None:
    """A containers.conf with this machine's limits, when they are below podman's
    (None then, or when CONTAINERS_CONF already names one)."""
    if os.environ.get("CONTAINERS_CONF"):
        return None
    nofile, nproc = limits or machine_limits()
    if nofile >= PODMAN_NOFILE and nproc >= PODMAN_NPROC:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "containers.conf"
    conf.write_text(
        "# This machine's limits, below podman's defaults (written by deploy/build_image.py).\n"
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    )
    return conf


# ---- the base image ----------------------------------------------------------------


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def build_base(name: str) -> None:
    need("mmdebstrap")
    with tempfile.TemporaryDirectory(prefix="fractalq-base-") as folder:
        tarball = Path(folder) / "base.tar"
        command = [
            "mmdebstrap",
            "--quiet",
            "--variant=essential",
            # /bin, /lib... as links into /usr, with no usrmerge package (nor its perl).
            "--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr",
            "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES),
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            DEBIAN_SUITE,
            str(tarball),
            *DEBIAN_SOURCES,
        ]
        run(command)
        changes = [f"--change=ENV {setting}" for setting in BASE_ENV]
        run(["podman", "import", "--quiet", *changes, str(tarball), name])


# ---- the images --------------------------------------------------------------------


def size_mb(name: str) -> float:
    found = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(found.stdout.strip()) / 1e6


def build(base: str, target: str, name: str, mounts: list[str], no_cache: bool) -> None:
    command = [
        "buildah",
        "bud",
        "--layers",
        *(["--no-cache"] if no_cache else []),
        "--pull=false",  # only when missing: the base may be local
        "--isolation",
        os.environ.get("BUILDAH_ISOLATION", "chroot"),
        "--file",
        str(DOCKERFILE),
        "--ignorefile",
        str(IGNOREFILE),
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--target",
        target,
        "--tag",
        name,
        *mounts,
        str(REPO),
    ]
    run(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/build_image.py",
        description="Build fractalq's images with buildah, without a registry.",
    )
    parser.add_argument("--tag", default="dev", help="tag of the images (default: dev)")
    parser.add_argument(
        "--name",
        default="localhost/fractalq",
        help="the image's name; the operator's gets -operator (default: localhost/fractalq)",
    )
    parser.add_argument("--only", choices=sorted(TARGETS), help="build one of the two images")
    parser.add_argument(
        "--base",
        help=f"the base image (PYTHON_IMAGE); default: {BASE_IMAGE}, made with mmdebstrap",
    )
    parser.add_argument("--rebuild-base", action="store_true", help="make the Debian base again")
    parser.add_argument(
        "--no-cache", action="store_true", help="reuse no layer of an earlier build"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "build" / "image",
        help="folder for the generated containers.conf (default: build/image)",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        need("buildah", "podman")
        conf = containers_conf(args.work)
        if conf is not None:
            os.environ["CONTAINERS_CONF"] = str(conf)
            say(f"this machine's container limits are in {conf}; for podman run too:")
            say(f"    export CONTAINERS_CONF={conf}")
        base = args.base or BASE_IMAGE
        if args.base is None and (args.rebuild_base or not image_exists(BASE_IMAGE)):
            build_base(BASE_IMAGE)
            say(f"base {BASE_IMAGE}: {size_mb(BASE_IMAGE):.0f} MB")
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="fractalq-pip-") as folder:
            mounts = pip_mounts(pip_settings(), Path(folder))
            for target, suffix in TARGETS.items():
                if args.only in (None, target):
                    started = time.monotonic()
                    build(base, target, f"{args.name}{suffix}:{args.tag}", mounts, args.no_cache)
                    timings[target] = time.monotonic() - started
    except BuildError as error:
        print(f"build_image: error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        command = shlex.join(error.cmd)
        print(f"build_image: error: {command} exited {error.returncode}", file=sys.stderr)
        return 1
    for target, seconds in timings.items():
        name = f"{args.name}{TARGETS[target]}:{args.tag}"
        say(f"{name}: {size_mb(name):.0f} MB (built in {seconds:.0f} s)")
    say(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
