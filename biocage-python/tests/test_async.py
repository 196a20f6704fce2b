"""The asyncio API on each engine: the same methods, and the event loop never waits."""

from __future__ import annotations

import asyncio
import gc
import time
from contextlib import asynccontextmanager

import pytest

import biocage

from conftest import container_exists

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def loop_watch(interval: float = 0.01):
    """Measures the longest stall of the event loop while the block runs."""
    worst = [0.0]
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            worst[0] = max(worst[0], now - last - interval)
            last = now

    task = asyncio.create_task(tick())
    await asyncio.sleep(interval * 2)
    try:
        yield worst
    finally:
        stop.set()
        await task


async def test_async_with_runs_and_keeps_state(opts):
    async with loop_watch() as stall:
        async with biocage.AsyncSandbox(**opts) as sb:
            assert sb.started and sb.runtime == opts["runtime"]
            r = await sb.run("x = 20")
            assert isinstance(r, biocage.ExecutionResult) and r.success
            r = await sb.run("import time\ntime.sleep(1)\nprint(x + 1)")
            assert r.stdout == "21\n"
        assert sb.closed
    # Start, a 1 s run and the removal happened while the loop went on ticking.
    assert stall[0] < 0.15, f"the event loop stalled for {stall[0]:.3f} s"


async def test_async_methods_mirror_the_session(opts, engine):
    sb = biocage.AsyncSandbox(**opts)
    assert not sb.started and sb.id is None
    await sb  # starts
    try:
        info = await sb.info()
        assert isinstance(info, biocage.SessionInfo) and info.runtime == engine
        await sb.write_file("a.txt", "async")
        assert await sb.read_file("a.txt") == b"async"
        path = await sb.create_temp_file(b"1,2\n", ".csv")
        assert (await sb.run(f"print(open({path!r}).read().strip())")).stdout == "1,2\n"
        await sb.run("y = 1")
        await sb.restart()
        assert (await sb.run("y")).error.name == "NameError"
        r = await sb.run("raise KeyError('k')")
        assert r.error.kind == "exception" and r.error.name == "KeyError"
        with pytest.raises(biocage.FileTransferError):
            await sb.read_file("/etc/passwd")
        cid = info.container_id
    finally:
        await sb.close()
    assert not container_exists(engine, cid)
    with pytest.raises(biocage.SessionClosedError):
        await sb.run("pass")


async def test_sandboxes_run_concurrently(opts):
    async with biocage.AsyncSandbox(**opts) as a, biocage.AsyncSandbox(**opts) as b:
        started = time.monotonic()
        ra, rb = await asyncio.gather(
            a.run("import time\ntime.sleep(1.5)\nprint('a')"),
            b.run("import time\ntime.sleep(1.5)\nprint('b')"),
        )
        elapsed = time.monotonic() - started
    assert (ra.stdout, rb.stdout) == ("a\n", "b\n")
    assert elapsed < 2.7, f"two 1.5 s runs took {elapsed:.2f} s"


async def test_interrupt_stops_a_run_in_progress(opts):
    async with biocage.AsyncSandbox(**opts) as sb:
        run = asyncio.create_task(sb.run("import time\ntime.sleep(60)", timeout=120))
        await asyncio.sleep(0.5)
        await sb.interrupt()
        r = await asyncio.wait_for(run, 10)
        assert r.error.name == "KeyboardInterrupt"


async def test_cancelling_a_run_interrupts_it(opts):
    async with biocage.AsyncSandbox(**opts) as sb:
        await sb.run("n = 0")
        run = asyncio.create_task(
            sb.run("import time\nwhile True:\n    n += 1\n    time.sleep(0.01)", timeout=120)
        )
        await asyncio.sleep(0.5)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        started = time.monotonic()
        r = await sb.run("print(n > 0)")
        assert r.stdout == "True\n"  # the state is kept
        assert time.monotonic() - started < 5  # the cancelled run did not go on


async def test_errors_are_raised_in_the_awaiting_task(opts):
    with pytest.raises(biocage.ImageMissingError):
        async with biocage.AsyncSandbox(**{**opts, "image": "biocage-test-no-such-image:0"}):
            pass


async def test_a_dropped_async_sandbox_is_removed_without_blocking(opts, engine):
    sb = biocage.AsyncSandbox(**opts)
    await sb.start()
    cid = (await sb.info()).container_id
    async with loop_watch() as stall:
        del sb
        gc.collect()
        for _ in range(100):  # removed in the background
            if not await asyncio.to_thread(container_exists, engine, cid):
                break
            await asyncio.sleep(0.1)
    assert not container_exists(engine, cid)
    assert stall[0] < 0.15, f"the event loop stalled for {stall[0]:.3f} s"
