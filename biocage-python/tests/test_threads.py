"""What a Python program relies on: the GIL is released during runs, runs of two
sandboxes overlap, interrupt() and Ctrl-C stop a run, and a sandbox that is dropped,
collected or left open at exit is removed."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import biocage

from conftest import container_exists

SLEEP = "import time\ntime.sleep({})"


def test_the_gil_is_released_while_a_run_is_in_progress(sb: biocage.Sandbox):
    done = threading.Event()
    ticks = 0

    def run() -> None:
        sb.run(SLEEP.format(1.0))
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    while not done.is_set():
        ticks += 1  # pure Python: needs the GIL
        time.sleep(0.001)
    worker.join()
    assert ticks > 200, f"the main thread only ran {ticks} times during a 1 s run"


def test_two_sandboxes_run_in_parallel_from_two_threads(opts):
    with biocage.Sandbox(**opts) as a, biocage.Sandbox(**opts) as b:
        results: dict[str, biocage.ExecutionResult] = {}

        def run(name: str, sandbox: biocage.Sandbox) -> None:
            results[name] = sandbox.run(SLEEP.format(1.5) + f"\nprint({name!r})")

        threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert results["a"].stdout == "a\n" and results["b"].stdout == "b\n"
        assert elapsed < 2.7, f"two 1.5 s runs took {elapsed:.2f} s: they did not overlap"


def test_interrupt_from_another_thread_stops_a_run(sb: biocage.Sandbox):
    sb.run("state = 'kept'")
    timer = threading.Timer(0.5, sb.interrupt)
    timer.start()
    started = time.monotonic()
    r = sb.run("import time\nwhile True:\n    time.sleep(0.01)", timeout=60)
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 5, elapsed
    assert not r.success and r.error.name == "KeyboardInterrupt"
    assert not r.state_lost
    assert sb.run("print(state)").stdout == "kept\n"
    sb.interrupt()  # nothing in progress: does nothing


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
def test_ctrl_c_interrupts_the_sandboxed_run_and_raises(sb: biocage.Sandbox):
    sb.run("counter = 0")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sb.run("import time\nwhile True:\n    counter += 1\n    time.sleep(0.01)", timeout=60)
    assert time.monotonic() - started < 5
    timer.join()
    # The sandbox's run has stopped (a run still in progress would hold this one up
    # for its whole time limit), and its state is kept.
    started = time.monotonic()
    r = sb.run("print(counter > 0)")
    assert r.stdout == "True\n"
    assert time.monotonic() - started < 2


HOST_PROGRAM = """
import sys, time
import biocage
sb = biocage.Sandbox(runtime={engine!r}, allow_unenforced_limits={allow!r})
print("id", sb.info().container_id, flush=True)
try:
    sb.run("import time\\nprint('started', flush=True)\\ntime.sleep(60)\\nmarker = 1", timeout=120)
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
started = time.monotonic()
r = sb.run("print('marker' in globals())")
print("next run", r.stdout.strip(), round(time.monotonic() - started, 2), flush=True)
{end}
"""


def _host_program(opts, end: str) -> subprocess.Popen:
    code = HOST_PROGRAM.format(
        engine=opts["runtime"], allow=opts["allow_unenforced_limits"], end=end
    )
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_in_the_host_program_stops_the_run_instead_of_leaving_it(opts, engine):
    proc = _host_program(opts, "sb.close()")
    assert proc.stdout is not None
    cid = proc.stdout.readline().split()[1]
    time.sleep(1.5)  # the run is in progress
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in out, out + err
    # The next run found the interpreter free (and the interrupted code never finished).
    line = next(x for x in out.splitlines() if x.startswith("next run"))
    _, _, state, seconds = line.split()
    assert state == "False" and float(seconds) < 2, line
    assert proc.returncode == 0, err
    assert not container_exists(engine, cid)


def test_a_dropped_sandbox_is_removed(opts, engine):
    sb = biocage.Sandbox(**opts)
    cid = sb.info().container_id
    assert container_exists(engine, cid)
    del sb
    assert not container_exists(engine, cid)


def test_a_garbage_collected_sandbox_is_removed(opts, engine):
    sb = biocage.Sandbox(**opts)
    cid = sb.info().container_id
    sb.cycle = sb  # only the cycle collector can free it
    del sb
    gc.collect()
    assert not container_exists(engine, cid)


def test_a_sandbox_left_open_at_exit_is_removed(opts, engine):
    proc = _host_program(opts, "")
    assert proc.stdout is not None
    cid = proc.stdout.readline().split()[1]
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not container_exists(engine, cid)


def test_close_from_another_thread_stops_a_run_in_progress(opts, engine):
    sb = biocage.Sandbox(**opts)
    cid = sb.info().container_id
    timer = threading.Timer(0.5, sb.close)
    timer.start()
    started = time.monotonic()
    r = sb.run(SLEEP.format(60), timeout=120)
    timer.join()
    assert time.monotonic() - started < 10
    assert not r.success
    assert sb.closed and not container_exists(engine, cid)
