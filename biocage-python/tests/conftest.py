"""Engine gating, as in the Rust suite.

``BIOCAGE_TEST_ENGINES=docker,podman`` selects the engines that tests which take the
``engine`` fixture run against; an engine that is listed but unreachable FAILS those
tests. Without the variable they are skipped, with the reason. Tests without the
fixture need no engine and always run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest

import biocage

ENGINES = ("docker", "podman")
VAR = "BIOCAGE_TEST_ENGINES"

_reachable: dict[str, Optional[str]] = {}
_caps: dict[str, dict[str, Any]] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES, indirect=True)


def _problem(engine: str) -> Optional[str]:
    """None when the engine answers and has the image; else what is wrong."""
    if engine not in _reachable:
        try:
            _caps[engine] = biocage.capabilities(engine)
            with biocage.Sandbox(runtime=engine, allow_unenforced_limits=True) as sb:
                sb.run("pass")
            _reachable[engine] = None
        except biocage.BioCageError as e:
            _reachable[engine] = f"{type(e).__name__}: {e}"
    return _reachable[engine]


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test ("docker" or "podman")."""
    name: str = request.param
    wanted = os.environ.get(VAR)
    if wanted is None:
        pytest.skip(f"engine tests do not run; set {VAR}=docker,podman (scripts/test.sh does)")
    if name not in [e.strip() for e in wanted.split(",")]:
        pytest.skip(f"{name} tests do not run; it is not listed in {VAR}={wanted}")
    problem = _problem(name)
    if problem is not None:
        pytest.fail(f"{name} is required by {VAR} but unusable: {problem}", pytrace=False)
    return name


@pytest.fixture
def caps(engine: str) -> dict[str, Any]:
    """What the engine under test can enforce."""
    return _caps[engine]


@pytest.fixture
def opts(engine: str, caps: dict[str, Any]) -> dict[str, Any]:
    """Keywords that start a sandbox on the engine under test: the defaults, plus
    permission to start where the engine cannot hold the memory and cpu limits (that
    refusal is tested on its own)."""
    return {"runtime": engine, "allow_unenforced_limits": not caps["cgroup_limits"]}


@pytest.fixture
def sb(opts: dict[str, Any]):
    """A started sandbox, closed after the test."""
    with biocage.Sandbox(**opts) as sandbox:
        yield sandbox


def container_exists(engine: str, container_id: str) -> bool:
    """Whether the engine still holds the container."""
    return any(s["container_id"] == container_id for s in biocage.list_sandboxes(engine))
