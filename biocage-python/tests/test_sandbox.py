"""The native sync API on each engine: configuration, methods, results, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import biocage

from conftest import container_exists


def test_state_persists_between_runs_and_results_are_typed(sb: biocage.Sandbox):
    r = sb.run("import math\nx = 41\ndef f(v):\n    return v + 1\n")
    assert isinstance(r, biocage.ExecutionResult)
    assert r.success is True and r.exit_code == 0 and r.error is None
    r = sb.run("print(f(x)); math.pi")
    assert r.stdout == "42\n"
    assert r.value == "3.141592653589793"
    assert isinstance(r.execution_time, float) and r.execution_time > 0
    for flag in ("stdout_truncated", "stderr_truncated", "state_lost", "value_truncated"):
        assert getattr(r, flag) is False, flag
    assert r.images == [] and r.images_truncated is False
    assert r.to_dict()["stdout"] == "42\n"


def test_an_exception_is_a_result_with_an_error_object(sb: biocage.Sandbox):
    r = sb.run("print('before')\nraise ValueError('bad value')")
    assert not r.success and r.exit_code == 1
    assert r.stdout == "before\n"
    assert "ValueError: bad value" in r.stderr
    e = r.error
    assert isinstance(e, biocage.ExecutionError)
    assert (e.kind, e.name, e.message) == ("exception", "ValueError", "bad value")
    assert e.traceback and "line 2" in e.traceback
    r = sb.run("print('unclosed'")
    assert r.error.kind == "exception" and r.error.name == "SyntaxError" and r.error.line == 1
    assert sb.run("print('state kept')").success


def test_a_timeout_is_a_result(sb: biocage.Sandbox):
    r = sb.run("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=1)
    assert not r.success and r.exit_code == 124
    assert r.error.kind == "timeout"
    assert r.stdout == "started\n"
    assert 0.9 < r.execution_time < 10


def test_figures_come_back_as_png_bytes(sb: biocage.Sandbox):
    r = sb.run(
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])"
    )
    assert r.success, r.stderr
    assert len(r.images) == 1
    assert isinstance(r.images[0], bytes) and r.images[0].startswith(b"\x89PNG\r\n\x1a\n")


def test_keyword_configuration_reaches_the_sandbox(opts, tmp_path: Path):
    data = tmp_path / "in.csv"
    data.write_text("a,b\n1,2\n")
    data.chmod(0o644)
    out = tmp_path / "out"
    out.mkdir()
    with biocage.Sandbox(
        **opts,
        memory="256m",
        cpus=0.5,
        pids=64,
        timeout=7,
        env={"GREETING": "hello"},
        exposures=[biocage.Exposure(data, "/data/in.csv"), (str(out), "/data/out", False)],
        output_cap=2048,
    ) as sb:
        limits = {lim.name: lim for lim in sb.info().limits}
        assert limits["memory"].value == "256m"
        assert limits["pids"].value == "64"
        assert limits["cpu"].value == "0.5"
        assert limits["network"].value == "off"
        assert limits["timeout"].value == "7s"
        r = sb.run(
            "import os\n"
            "print(os.environ['GREETING'])\n"
            "print(open('/data/in.csv').read().splitlines()[1])\n"
            "open('/data/out/result.txt', 'w').write('written')\n"
            "try:\n"
            "    open('/data/in.csv', 'w')\n"
            "except OSError as e:\n"
            "    print('read-only', e.errno)\n"
        )
        assert r.success, r.stderr
        assert r.stdout.splitlines() == ["hello", "1,2", "read-only 30"]
        assert (out / "result.txt").read_text() == "written"
        r = sb.run("print('x' * 10000)")
        assert r.stdout_truncated and len(r.stdout) <= 2048
        info = sb.info()
        assert [(e.container, e.read_only) for e in info.exposed_paths] == [
            ("/data/in.csv", True),
            ("/data/out", False),
        ]


def test_network_is_off_unless_asked(sb: biocage.Sandbox):
    r = sb.run(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked')\n"
    )
    assert r.stdout == "blocked\n"


def test_info_reports_the_session(sb: biocage.Sandbox, engine: str):
    sb.run("pass")
    info = sb.info()
    assert isinstance(info, biocage.SessionInfo)
    assert info.session_id == sb.id and info.runtime == engine == sb.runtime
    assert info.container_name.startswith("biocage-") and info.container_id
    assert info.is_running is True
    assert info.image == "biocage:latest"
    assert info.python_version.startswith("3.")
    assert info.runs >= 1 and info.temp_files == 0
    assert {"memory", "pids", "cpu", "timeout", "network"} <= {lim.name for lim in info.limits}
    assert all(
        lim.enforcement in ("engine", "rlimit", "agent", "unenforced") for lim in info.limits
    )
    assert info.limit("timeout").value == "30s"


def test_files_move_both_ways(sb: biocage.Sandbox):
    sb.write_file("notes.txt", "héllo")
    sb.write_file("/tmp/blob.bin", bytes(range(256)))
    r = sb.run(
        "print(open('/workspace/notes.txt').read()); print(len(open('/tmp/blob.bin','rb').read()))"
    )
    assert r.stdout == "héllo\n256\n"
    sb.run("open('made.txt', 'w').write('from the sandbox')")
    assert sb.read_file("made.txt") == b"from the sandbox"
    assert sb.read_file("/tmp/blob.bin") == bytes(range(256))
    path = sb.create_temp_file("a,b\n1,2\n", ".csv")
    assert path.startswith("/tmp/") and path.endswith(".csv")
    assert sb.run(f"print(open({path!r}).read())").stdout == "a,b\n1,2\n\n"
    assert sb.info().temp_files == 1
    with pytest.raises(biocage.FileTransferError):
        sb.read_file("/etc/passwd")


def test_restart_drops_the_state(sb: biocage.Sandbox):
    sb.run("x = 1")
    sb.restart()
    r = sb.run("print(x)")
    assert r.error.name == "NameError"
    assert sb.run("print('fresh')").success


def test_close_removes_the_container_and_later_calls_raise(opts, engine: str):
    sb = biocage.Sandbox(**opts)
    cid = sb.info().container_id
    assert container_exists(engine, cid)
    sb.close()
    sb.close()  # idempotent
    assert sb.closed
    assert not container_exists(engine, cid)
    with pytest.raises(biocage.SessionClosedError, match="closed"):
        sb.run("pass")
    with pytest.raises(biocage.SessionClosedError):
        sb.info()


def test_a_missing_image_raises_image_missing(opts):
    with pytest.raises(biocage.ImageMissingError) as info:
        biocage.Sandbox(**opts, image="biocage-test-no-such-image:0")
    assert info.value.image == "biocage-test-no-such-image:0"
    assert "build it with" in str(info.value)


def test_a_limit_the_engine_cannot_hold_is_refused_unless_allowed(engine, caps):
    if caps["cgroup_limits"]:
        with biocage.Sandbox(runtime=engine) as sb:
            assert sb.info().limit("memory").enforcement == "engine"
        return
    with pytest.raises(biocage.UnenforceableLimitError) as info:
        biocage.Sandbox(runtime=engine)
    assert info.value.limit in ("memory", "cpu")
    assert "allow_unenforced_limits" in str(info.value)
    with biocage.Sandbox(runtime=engine, allow_unenforced_limits=True) as sb:
        assert sb.info().limit("memory").enforcement == "unenforced"
