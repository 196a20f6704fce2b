"""The reference API (BioCageManager) on each engine, in this project's own words:
where it follows the reference, and where it keeps more than the reference did."""

from __future__ import annotations

from pathlib import Path

import pytest

import biocage
from biocage import BioCageManager

from conftest import container_exists


@pytest.fixture
def manager(opts):
    m = BioCageManager(
        runtime=opts["runtime"],
        allow_unenforced_limits=opts["allow_unenforced_limits"],
        verbose=False,
    )
    yield m
    m.cleanup()


def test_a_started_manager_keeps_state_and_reports_the_container(manager, engine):
    cid = manager.start_container(memory_limit="256m", cpu_limit="0.5")
    assert manager.is_running
    info = manager.get_container_info()
    assert info["container_id"] == cid and info["is_running"] is True
    assert info["container_name"].startswith("biocage-")
    assert info["image_name"] == "biocage:latest"
    assert info["exposed_paths"] == {} and info["temp_files_count"] == 0
    assert info["runtime"] == engine
    manager.run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})")
    r = manager.run("print(df.a.sum())")
    assert isinstance(r, biocage.SandboxExecutionResult)
    assert r.success and r.stdout == "3\n" and r.error is None and r.execution_time > 0
    assert r.result is not None and r.result.exit_code == 0
    with pytest.raises(RuntimeError, match="already running"):
        manager.start_container()
    manager.cleanup()
    assert not manager.is_running and not container_exists(engine, cid)


def test_a_failed_run_stops_the_container_unless_told_not_to(manager):
    manager.start_container()
    r = manager.run("x = 1\n1 / 0", shutdown_on_failure=False)
    assert not r.success and r.exit_code == 1 and r.error == "division by zero"
    assert "ZeroDivisionError" in r.stderr
    assert manager.is_running and manager.run("print(x)").stdout == "1\n"
    r = manager.run("undefined_name")
    assert not r.success and not manager.is_running


def test_timeouts_report_as_the_reference_did(manager):
    manager.start_container()
    r = manager.run("import time\nprint('go', flush=True)\ntime.sleep(30)", timeout=1)
    assert r.exit_code == 124 and not r.success
    assert r.error == "Code execution timed out after 1 seconds"
    assert r.stdout == "go\n"
    assert not manager.is_running  # shutdown_on_failure


def test_without_a_started_container_each_run_is_one_shot(manager):
    assert not manager.is_running
    assert manager.run("x = 5\nprint(x)").stdout == "5\n"
    r = manager.run("print(x)", shutdown_on_failure=False)
    assert "NameError" in r.stderr and r.exit_code == 1 and r.error is None
    r = manager.run("print(input())", stdin_input="typed\n")
    assert r.stdout == "typed\n"


def test_exposing_a_path_on_a_started_container_replaces_it_with_a_warning(manager, tmp_path: Path):
    data = tmp_path / "data.txt"
    data.write_text("payload")
    data.chmod(0o644)
    first = manager.start_container(memory_limit="256m")
    manager.run("x = 1")
    with pytest.warns(biocage.StateLostWarning):
        path = manager.expose_file(data)
    assert path == "/app/shared/data.txt"
    assert manager.container_id != first
    assert manager.run(f"print(open({path!r}).read())").stdout == "payload\n"
    r = manager.run("print(x)", shutdown_on_failure=False)
    assert "NameError" in r.stderr  # the state went with the old container
    # The new container kept the settings of the last start.
    assert manager._sandbox.info().limit("memory").value == "256m"


def test_a_temp_file_on_a_started_container_keeps_the_state(manager):
    manager.start_container()
    manager.run("kept = True")
    path = manager.create_temp_file("1,2\n", ".csv")
    assert path.startswith("/tmp/")
    assert manager.run(f"print(kept, open({path!r}).read().strip())").stdout == "True 1,2\n"
    assert manager.get_container_info()["temp_files_count"] == 1


def test_paths_exposed_before_the_start_are_mounted(manager, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "in.txt"
    src.write_text("in")
    host_temp = manager.create_temp_file("temp content", ".txt")
    assert host_temp.startswith("/app/shared/")
    manager.configure_context_manager(
        expose_files={str(src): "/app/in.txt"},
        expose_directories_rw={str(out): "/app/out"},
        memory_limit="256m",
    )
    with manager as m:
        r = m.run(
            f"print(open('/app/in.txt').read(), open({host_temp!r}).read())\n"
            "open('/app/out/o.txt', 'w').write('out')"
        )
        assert r.stdout == "in temp content\n", r.stderr
        assert (out / "o.txt").read_text() == "out"
    assert m.exposed_paths == {} and m.temp_files == []


def test_settings_are_checked(manager, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        manager.expose_file(tmp_path / "missing")
    with pytest.raises(biocage.InvalidConfigError, match="folders"):
        f = tmp_path / "f"
        f.write_text("")
        manager.expose_path(f, "/app/f", read_only=False)
    assert manager.exposed_paths == {}
    for bad in ({"memory_limit": "invalid"}, {"cpu_limit": "also_invalid"}):
        with pytest.raises(ValueError, match="invalid"):
            manager.start_container(**bad)
        with pytest.raises(RuntimeError, match="invalid"):
            manager.start_container(**bad)
    # More cpus than the host has: held at the host's count.
    manager.start_container(cpu_limit=str(biocage._native.host_cpus() + 8))
    assert manager.run("print('ok')").stdout == "ok\n"


def test_a_missing_image_raises_the_engine_error(opts):
    with pytest.raises(biocage.ImageMissingError) as info:
        BioCageManager(image_name="biocage-test-no-such-image:0", runtime=opts["runtime"])
    assert isinstance(info.value, RuntimeError)
    assert "image biocage-test-no-such-image:0 is not present" in str(info.value)
    assert info.value.build_command
