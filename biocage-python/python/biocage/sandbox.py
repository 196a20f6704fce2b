"""The native API: :class:`Sandbox` (blocking) and :class:`AsyncSandbox` (asyncio)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from . import _native
from ._native import Exposure, SandboxConfig
from ._types import ExecutionResult, SessionInfo

__all__ = ["AsyncSandbox", "Sandbox", "capabilities", "list_sandboxes"]

ExposureLike = Union[Exposure, "tuple[str, str]", "tuple[str, str, bool]"]

# The keyword defaults of Sandbox and AsyncSandbox (those of SandboxConfig).
_DEFAULTS: dict[str, Any] = {
    "image": "biocage:latest",
    "memory": "512m",
    "cpus": 1.0,
    "pids": 256,
    "timeout": 30.0,
    "network": False,
    "exposures": (),
    "env": None,
    "allow_unenforced_limits": False,
    "capture_figures": True,
}


def _config(config: Optional[SandboxConfig], given: dict[str, Any]) -> SandboxConfig:
    options = {k: v for k, v in given.items() if v is not None}
    if config is None:
        return SandboxConfig(**options)
    if not isinstance(config, SandboxConfig):
        raise TypeError(f"config must be a biocage.SandboxConfig, not {type(config).__name__}")
    changed = [k for k, v in options.items() if k not in _DEFAULTS or _DEFAULTS[k] != v]
    if changed:
        raise TypeError(
            "give either a SandboxConfig or keyword settings, not both "
            f"(also given: {', '.join(sorted(changed))})"
        )
    return config


def _bytes(data: Union[bytes, bytearray, memoryview, str]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class Sandbox:
    """A live, hardened Python sandbox: one interpreter in a container, whose state
    (variables, imports, functions, open files, DataFrames) persists between runs.

    The sandbox starts when it is made and is removed by :meth:`close`, at the end of a
    ``with`` block, when the object is garbage-collected, or at interpreter exit::

        with biocage.Sandbox(memory="1g", timeout=10) as sb:
            sb.run("import pandas as pd; df = pd.DataFrame({'x': [1, 2, 3]})")
            r = sb.run("print(df.x.sum())")
            print(r.stdout)          # 6

    Settings are keywords (or a ready :class:`SandboxConfig` as ``config``):
    ``runtime`` (``"docker"``, ``"podman"`` or ``"auto"``: Docker, then Podman),
    ``image``, ``memory`` (``"512m"``), ``cpus`` (1.0; above the host's core count it is
    held at that count), ``pids`` (256), ``timeout`` (seconds per run, 30), ``network``
    (off), ``exposures`` (``Exposure(host, container, read_only=True)`` objects or
    ``(host, container[, read_only])`` tuples), ``env`` (a dict),
    ``allow_unenforced_limits`` (start where the engine cannot hold a limit, e.g. memory
    and cpu on rootless Podman with cgroup v1; otherwise such a sandbox refuses to start
    with :class:`UnenforceableLimitError`), ``capture_figures`` (matplotlib figures as
    PNG, on); and any other :class:`SandboxConfig` keyword (``interrupt_grace``,
    ``output_cap``, ``workspace_size``, ``tmp_size``, ``shm_size``, ``max_transfer``,
    ``max_code_size``, ``rw_exposure_size``, ``rw_exposure_files``, ``user``).

    Runs of the sandboxed code never raise for the code's own failures: exceptions,
    timeouts, crashes and out-of-memory come back as an :class:`ExecutionResult` with
    ``success=False`` and an ``error``. Exceptions (all :class:`BioCageError`) are for
    the sandbox itself: no engine, no image, a refused setting, a closed sandbox.

    Threads: every call releases the GIL while it waits, so other threads go on, and
    sandboxes used from different threads run in parallel. :meth:`interrupt` may be
    called from another thread while :meth:`run` is in progress. Ctrl-C while
    :meth:`run` waits interrupts the sandbox's run (a ``KeyboardInterrupt`` in the
    sandboxed code, which keeps its state), waits for it to stop, then raises
    ``KeyboardInterrupt`` in the host program.
    """

    def __init__(
        self,
        config: Optional[SandboxConfig] = None,
        *,
        runtime: str = "auto",
        image: Optional[str] = None,
        memory: Union[str, int, None] = None,
        cpus: Optional[float] = None,
        pids: Optional[int] = None,
        timeout: Optional[float] = None,
        network: Optional[bool] = None,
        exposures: Optional[Iterable[ExposureLike]] = None,
        env: Optional[Mapping[str, str]] = None,
        allow_unenforced_limits: Optional[bool] = None,
        capture_figures: Optional[bool] = None,
        **settings: Any,
    ) -> None:
        """Starts the sandbox (see the class documentation for the settings)."""
        self._core: Optional[_native.SessionCore] = None
        self._config = _config(
            config,
            {
                "image": image,
                "memory": memory,
                "cpus": cpus,
                "pids": pids,
                "timeout": timeout,
                "network": network,
                "exposures": exposures,
                "env": dict(env) if env is not None else None,
                "allow_unenforced_limits": allow_unenforced_limits,
                "capture_figures": capture_figures,
                **settings,
            },
        )
        self._core = _native.start(runtime, self._config)

    @classmethod
    def from_config(cls, config: SandboxConfig, *, runtime: str = "auto") -> Sandbox:
        """A sandbox made with ``config`` on ``runtime``."""
        return cls(config, runtime=runtime)

    def _live(self) -> _native.SessionCore:
        if self._core is None:
            from .errors import SessionClosedError

            raise SessionClosedError("the sandbox was never started")
        return self._core

    @property
    def id(self) -> str:
        """The session's id."""
        return self._live().id

    @property
    def runtime(self) -> str:
        """The engine in use: ``"docker"`` or ``"podman"``."""
        return self._live().engine

    @property
    def config(self) -> SandboxConfig:
        """The sandbox's configuration."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once the sandbox was closed."""
        return self._core is None or self._core.closed

    def run(self, code: str, timeout: Optional[float] = None) -> ExecutionResult:
        """Runs ``code`` in the sandbox's interpreter, where earlier runs' state is.

        ``timeout`` (seconds) replaces the configured time limit for this run. At the
        limit the code gets a ``KeyboardInterrupt`` (state kept, ``exit_code`` 124); if
        it ignores that for ``interrupt_grace`` seconds its interpreter is killed and
        replaced (``state_lost``). Indented code (as in a triple-quoted string) is
        dedented first.

        Returns an :class:`ExecutionResult`; raises :class:`BioCageError` only when the
        sandbox itself fails (or :class:`SessionClosedError` after :meth:`close`).
        """
        return ExecutionResult(json.loads(self._live().run(code, timeout)))

    def interrupt(self) -> None:
        """Interrupts the run in progress (``KeyboardInterrupt`` in the sandboxed code,
        state kept). Callable from any thread; does nothing when no run is in progress."""
        self._live().interrupt()

    def restart(self) -> None:
        """Replaces the interpreter with a fresh one: all state is dropped."""
        self._live().restart()

    def info(self) -> SessionInfo:
        """Container, image, exposures and every limit with how it is enforced."""
        return SessionInfo(json.loads(self._live().info()))

    def read_file(self, path: str) -> bytes:
        """The content of ``path`` in the sandbox (the workspace, ``/tmp`` or a
        read-write exposure), up to ``max_transfer`` bytes."""
        return self._live().read_file(path)

    def write_file(self, path: str, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Writes ``data`` (``str`` is written as UTF-8) to ``path`` in the sandbox: a
        relative path is in the workspace (``/workspace``); absolute ones may be in the
        workspace, ``/tmp`` or a read-write exposure."""
        self._live().write_file(path, _bytes(data))

    def create_temp_file(
        self, content: Union[bytes, bytearray, memoryview, str] = b"", suffix: str = ""
    ) -> str:
        """Creates a file under ``/tmp`` in the sandbox holding ``content`` (``str`` as
        UTF-8) and returns its path, which ends with ``suffix``."""
        return self._live().create_temp_file(_bytes(content), suffix)

    def close(self) -> None:
        """Stops the sandbox and removes its container (read-write exposures are copied
        back first). A run in progress in another thread is interrupted. Idempotent."""
        if self._core is not None:
            self._core.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return "<biocage.Sandbox (not started)>"
        state = "closed" if self._core.closed else "live"
        return f"<biocage.Sandbox {self._core.id} on {self._core.engine} ({state})>"


class AsyncSandbox:
    """The asyncio twin of :class:`Sandbox`: the same settings and methods, as
    coroutines that never block the event loop (the engine works on its own threads
    and hands results to the loop).

    Making the object checks the settings; the sandbox starts at ``async with``, at
    ``await sandbox`` or :meth:`start`, or at the first call::

        async with biocage.AsyncSandbox(timeout=10) as sb:
            await sb.run("x = 21")
            r = await sb.run("print(x * 2)")

    Cancelling a task that awaits :meth:`run` interrupts the sandbox's run. Sandboxes
    run concurrently (``asyncio.gather`` over several of them). A sandbox that is
    garbage-collected unclosed is removed in the background.
    """

    def __init__(
        self,
        config: Optional[SandboxConfig] = None,
        *,
        runtime: str = "auto",
        image: Optional[str] = None,
        memory: Union[str, int, None] = None,
        cpus: Optional[float] = None,
        pids: Optional[int] = None,
        timeout: Optional[float] = None,
        network: Optional[bool] = None,
        exposures: Optional[Iterable[ExposureLike]] = None,
        env: Optional[Mapping[str, str]] = None,
        allow_unenforced_limits: Optional[bool] = None,
        capture_figures: Optional[bool] = None,
        **settings: Any,
    ) -> None:
        """Checks the settings; the sandbox starts later (see the class documentation)."""
        self._core: Optional[_native.SessionCore] = None
        self._starting: Optional[asyncio.Future[Any]] = None
        self._runtime = runtime
        self._config = _config(
            config,
            {
                "image": image,
                "memory": memory,
                "cpus": cpus,
                "pids": pids,
                "timeout": timeout,
                "network": network,
                "exposures": exposures,
                "env": dict(env) if env is not None else None,
                "allow_unenforced_limits": allow_unenforced_limits,
                "capture_figures": capture_figures,
                **settings,
            },
        )

    @property
    def config(self) -> SandboxConfig:
        """The sandbox's configuration."""
        return self._config

    @property
    def started(self) -> bool:
        """True once the sandbox has started."""
        return self._core is not None

    @property
    def id(self) -> Optional[str]:
        """The session's id (``None`` before the start)."""
        return self._core.id if self._core is not None else None

    @property
    def runtime(self) -> Optional[str]:
        """The engine in use (``None`` before the start)."""
        return self._core.engine if self._core is not None else None

    @property
    def closed(self) -> bool:
        """True once the sandbox was closed."""
        return self._core is not None and self._core.closed

    async def start(self) -> AsyncSandbox:
        """Starts the sandbox (once; concurrent callers wait for the same start)."""
        if self._core is not None:
            return self
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = asyncio.ensure_future(
                _native.start_async(loop, self._runtime, self._config)
            )
        starting = self._starting
        try:
            core = await asyncio.shield(starting)
        except BaseException:
            if starting.done():
                self._starting = None
            raise
        if self._core is None:
            self._core = core
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    async def _live(self) -> _native.SessionCore:
        if self._core is None:
            await self.start()
        assert self._core is not None
        return self._core

    async def run(self, code: str, timeout: Optional[float] = None) -> ExecutionResult:
        """Runs ``code``; see :meth:`Sandbox.run`. Cancelling the awaiting task
        interrupts the sandbox's run."""
        core = await self._live()
        run_id, future = core.run_async(asyncio.get_running_loop(), code, timeout)
        try:
            text = await future
        except asyncio.CancelledError:
            core.cancel_run(run_id)
            raise
        return ExecutionResult(json.loads(text))

    async def interrupt(self) -> None:
        """Interrupts the run in progress (state kept)."""
        core = await self._live()
        await core.interrupt_async(asyncio.get_running_loop())

    async def restart(self) -> None:
        """Replaces the interpreter with a fresh one: all state is dropped."""
        core = await self._live()
        await core.restart_async(asyncio.get_running_loop())

    async def info(self) -> SessionInfo:
        """Container, image, exposures and every limit with how it is enforced."""
        core = await self._live()
        return SessionInfo(json.loads(await core.info_async(asyncio.get_running_loop())))

    async def read_file(self, path: str) -> bytes:
        """The content of ``path`` in the sandbox; see :meth:`Sandbox.read_file`."""
        core = await self._live()
        return await core.read_file_async(asyncio.get_running_loop(), path)

    async def write_file(self, path: str, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Writes ``data`` to ``path`` in the sandbox; see :meth:`Sandbox.write_file`."""
        core = await self._live()
        await core.write_file_async(asyncio.get_running_loop(), path, _bytes(data))

    async def create_temp_file(
        self, content: Union[bytes, bytearray, memoryview, str] = b"", suffix: str = ""
    ) -> str:
        """Creates a temporary file; see :meth:`Sandbox.create_temp_file`."""
        core = await self._live()
        return await core.create_temp_file_async(
            asyncio.get_running_loop(), _bytes(content), suffix
        )

    async def close(self) -> None:
        """Stops the sandbox and removes its container. Idempotent."""
        if self._core is None and self._starting is not None:
            try:
                await self.start()
            except Exception:
                return
        if self._core is not None:
            await self._core.close_async(asyncio.get_running_loop())

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return "<biocage.AsyncSandbox (not started)>"
        state = "closed" if self._core.closed else "live"
        return f"<biocage.AsyncSandbox {self._core.id} on {self._core.engine} ({state})>"


def capabilities(runtime: str = "auto") -> dict[str, Any]:
    """What the engine can enforce: ``engine``, ``engine_version``, ``rootless``,
    ``cgroup_version``, ``cgroup_limits`` (memory, pids and cpu held by cgroups),
    ``tmpfs_inode_limit``, ..."""
    return json.loads(_native.capabilities(runtime))


def list_sandboxes(runtime: str = "auto") -> list[dict[str, Any]]:
    """The sandboxes BioCage made in the engine (live or not), each a dict with
    ``container_id``, ``name``, ``session_id``, ``image``, ``state``, ``owner_pid``."""
    return json.loads(_native.list_sandboxes(runtime))
