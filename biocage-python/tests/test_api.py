"""The package without an engine: configuration, exceptions, result types, typing."""

from __future__ import annotations

import base64
import json
import os
import pydoc
from importlib import resources
from pathlib import Path

import pytest

import biocage
from biocage import _native

ERRORS = [
    biocage.EngineUnavailableError,
    biocage.ImageMissingError,
    biocage.InvalidConfigError,
    biocage.UnenforceableLimitError,
    biocage.EngineError,
    biocage.AgentError,
    biocage.FileTransferError,
    biocage.SessionClosedError,
]


def test_exceptions_form_one_hierarchy_under_biocage_error():
    assert issubclass(biocage.BioCageError, RuntimeError)
    for cls in ERRORS:
        assert issubclass(cls, biocage.BioCageError), cls
    # Bad settings are also ValueErrors, as Python code expects of them.
    assert issubclass(biocage.InvalidConfigError, ValueError)
    assert issubclass(biocage.StateLostWarning, UserWarning)


def test_config_defaults_are_the_hardened_ones():
    c = biocage.SandboxConfig()
    assert c.image == "biocage:latest"
    assert c.memory == 512 << 20
    assert c.pids == 256
    assert c.timeout == 30.0
    assert c.network is False
    assert c.exposures == []
    assert c.allow_unenforced_limits is False
    assert c.capture_figures is True
    assert c.interrupt_grace == 2.0
    assert c.output_cap == 1 << 20
    assert c.user == "1000:1000"


def test_config_keywords_mirror_sandbox_config(tmp_path: Path):
    (tmp_path / "in.csv").write_text("a\n1\n")
    c = biocage.SandboxConfig(
        image="other:1",
        memory="1g",
        cpus=0.5,
        pids=64,
        timeout=5,
        network=True,
        exposures=[(str(tmp_path / "in.csv"), "/data/in.csv"), (tmp_path, "/out", False)],
        env={"A": "1"},
        allow_unenforced_limits=True,
        capture_figures=False,
        interrupt_grace=1.5,
        output_cap="64k",
        workspace_size="32m",
        tmp_size=16 << 20,
        shm_size="8m",
        max_transfer="2m",
        max_code_size="1m",
        rw_exposure_size="4m",
        rw_exposure_files=100,
    )
    assert (c.image, c.memory, c.cpus, c.pids, c.timeout) == ("other:1", 1 << 30, 0.5, 64, 5.0)
    assert c.network and c.allow_unenforced_limits and not c.capture_figures
    assert c.env == {"A": "1"}
    assert c.exposures == [
        biocage.Exposure(tmp_path / "in.csv", "/data/in.csv"),
        biocage.Exposure(tmp_path, "/out", read_only=False),
    ]
    assert c.exposures[1].mode == "read_write" and not c.exposures[1].read_only
    assert (c.interrupt_grace, c.output_cap, c.workspace_size) == (1.5, 64 << 10, 32 << 20)
    assert (c.tmp_size, c.shm_size, c.max_transfer, c.max_code_size) == (
        16 << 20,
        8 << 20,
        2 << 20,
        1 << 20,
    )
    assert (c.rw_exposure_size, c.rw_exposure_files) == (4 << 20, 100)
    assert json.loads(c.to_json())["memory_bytes"] == 1 << 30


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"memory": "lots"}, "memory", 'invalid memory "lots"'),
        ({"memory": "1m"}, "memory", "32m"),
        ({"cpus": 0}, "cpus", "invalid cpus"),
        ({"timeout": 0}, "timeout", "at most 86400"),
        ({"pids": 2}, "pids", "at least 16"),
        ({"user": "0:0"}, "user", "never runs as root"),
        ({"exposures": [("/no/such/path", "/data")]}, "exposure", "does not exist"),
        ({"exposures": [("/", "/etc")]}, "exposure", "system or sandbox location"),
    ],
)
def test_invalid_settings_raise_invalid_config_error_with_the_core_message(options, field, message):
    with pytest.raises(biocage.InvalidConfigError) as info:
        biocage.SandboxConfig(**options)
    assert info.value.field == field
    assert message in str(info.value)
    # The same check applies to keywords of the sandboxes, before any engine is asked.
    with pytest.raises(ValueError, match="invalid"):
        biocage.Sandbox(runtime="docker", **options)
    with pytest.raises(ValueError, match="invalid"):
        biocage.AsyncSandbox(**options)


def test_an_unknown_runtime_is_refused():
    with pytest.raises(biocage.InvalidConfigError, match=r"docker.*podman.*auto"):
        biocage.Sandbox(runtime="lxc")


def test_a_config_and_keywords_together_are_refused():
    with pytest.raises(TypeError, match="memory"):
        biocage.Sandbox(biocage.SandboxConfig(), memory="1g")


def test_a_cpu_limit_above_the_host_is_held_at_the_host_count():
    host = _native.host_cpus()
    assert host >= 1
    c = biocage.SandboxConfig(cpus=host + 6)
    assert c.cpus == host
    assert c.requested_cpus == host + 6
    assert biocage.SandboxConfig(cpus=0.5).cpus == 0.5


def test_an_unreachable_engine_raises_engine_unavailable(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/biocage-test.sock")
    with pytest.raises(biocage.EngineUnavailableError) as info:
        biocage.Sandbox(runtime="docker")
    e = info.value
    assert e.engine == "docker"
    assert "cannot reach docker at unix:///nonexistent/biocage-test.sock" in str(e)
    assert e.hint and "docker" in e.hint.lower()
    # The reference API raised RuntimeError there: it still does.
    with pytest.raises(RuntimeError, match="cannot reach docker"):
        biocage.BioCageManager(runtime="docker")


FULL_RESULT = {
    "success": False,
    "stdout": "out\n",
    "stderr": "Traceback...\n",
    "exit_code": 1,
    "execution_time": 0.25,
    "error": {
        "kind": "exception",
        "name": "ValueError",
        "message": "bad",
        "traceback": "tb",
        "line": 3,
        "offset": 7,
        "truncated": False,
    },
    "state_lost": False,
    "stdout_truncated": True,
    "stderr_truncated": False,
    "value": "42",
    "value_truncated": False,
    "images": [{"mime": "image/png", "data": base64.b64encode(b"\x89PNG...").decode()}],
    "images_truncated": True,
    "displays": [{"text/plain": "42"}],
    "displays_truncated": False,
    "some_future_field": 7,
}


def test_execution_result_types_every_field_of_the_contract():
    r = biocage.ExecutionResult.from_json(json.dumps(FULL_RESULT))
    assert r.success is False and r.exit_code == 1 and r.execution_time == 0.25
    assert (r.stdout, r.stderr) == ("out\n", "Traceback...\n")
    assert (r.stdout_truncated, r.stderr_truncated, r.state_lost) == (True, False, False)
    assert isinstance(r.error, biocage.ExecutionError)
    assert (r.error.kind, r.error.name, r.error.message) == ("exception", "ValueError", "bad")
    assert (r.error.traceback, r.error.line, r.error.offset, r.error.truncated) == (
        "tb",
        3,
        7,
        False,
    )
    assert str(r.error) == "ValueError: bad"
    assert (r.value, r.value_truncated) == ("42", False)
    assert r.images == [b"\x89PNG..."] and r.images_truncated is True
    assert r.displays == [{"text/plain": "42"}] and r.displays_truncated is False
    # Fields added to the contract later are still there.
    assert r.some_future_field == 7
    assert r.to_dict() == FULL_RESULT
    assert biocage.ExecutionResult.from_json(r.to_json()) == r
    assert "success=False" in repr(r)


def test_sandbox_execution_result_is_the_reference_one():
    r = biocage.SandboxExecutionResult(stdout="x", exit_code=0)
    assert r.success and r.to_dict() == {
        "stdout": "x",
        "stderr": "",
        "exit_code": 0,
        "execution_time": 0.0,
        "error": None,
        "success": True,
    }
    assert not biocage.SandboxExecutionResult(error="boom").success
    assert repr(r) == "SandboxExecutionResult(exit_code=0, success=True)"


def test_type_stubs_and_py_typed_ship_with_the_package():
    files = resources.files("biocage")
    assert files.joinpath("py.typed").is_file()
    stub = files.joinpath("_native.pyi").read_text()
    for name in ("class SessionCore", "class SandboxConfig", "def start_async"):
        assert name in stub
    # The Python modules carry their own annotations.
    assert biocage.Sandbox.run.__annotations__["return"] in (
        "ExecutionResult",
        biocage.ExecutionResult,
    )


def test_help_reads_well():
    text = pydoc.render_doc(biocage.Sandbox, renderer=pydoc.plaintext)
    for expected in (
        "A live, hardened Python sandbox",
        "run(self, code: 'str', timeout: 'Optional[float]' = None) -> 'ExecutionResult'",
        "interrupt(self)",
        "create_temp_file(",
        "Ctrl-C",
        "allow_unenforced_limits",
    ):
        assert expected in text, expected
    assert "asyncio" in pydoc.render_doc(biocage.AsyncSandbox, renderer=pydoc.plaintext)
    assert "hardened" in pydoc.render_doc(biocage.SandboxConfig, renderer=pydoc.plaintext)
    assert biocage.__doc__ and "BioCageManager" in biocage.__doc__
    assert os.path.basename(biocage.__file__) == "__init__.py"
