"""The reference API, on the Rust engine: :class:`BioCageManager` and
:class:`SandboxExecutionResult`, drop-in for code written for the original
``biocage`` package (the Docker-CLI one).

Differences from the reference, all in the direction of keeping users' code working:

- State persists for real (one live interpreter), not by pickling variables and
  re-running imports and function definitions: every object survives between runs.
- ``runtime`` picks the engine: ``"docker"``, ``"podman"`` or ``"auto"`` (Docker, then
  Podman). On an engine that cannot hold the memory or cpu limit (rootless Podman on
  cgroup v1) a start is refused unless ``allow_unenforced_limits=True`` is given.
- A ``cpu_limit`` above the host's core count is held at the core count, not refused.
- A missing image raises :class:`ImageMissingError` (a ``RuntimeError``) saying how to
  build it, instead of running ``docker build .`` from the current folder;
  :meth:`BioCageManager.build_image` builds one explicitly.
- Containers are named ``biocage-<session id>`` by the engine: ``container_name_prefix``
  is accepted and kept, but does not change the name.
- Exposing a path on a *started* container: neither Docker nor Podman can add a mount to
  a running container, so, as in the reference, the container is replaced with one that
  has the new mount: the interpreter's state is lost. The new container keeps the
  settings of the last start (the reference fell back to the defaults), and a
  :class:`StateLostWarning` is issued. Expose paths before ``start_container`` (or with
  ``configure_context_manager``) to avoid it. :meth:`BioCageManager.create_temp_file`
  on a started container does not need a mount: the file is written into the sandbox
  (under ``/tmp``) and the state is kept.
- Read-write exposures must be folders; a read-write folder is a copy in the sandbox
  whose changes are copied back to the host after every run.
- ``stdin_input`` is given to the code as ``sys.stdin`` (there is no real stdin).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from . import _native
from ._native import Exposure, SandboxConfig
from ._types import ExecutionResult
from .errors import BioCageError, InvalidConfigError, StateLostWarning
from .sandbox import Sandbox

__all__ = ["BioCageManager", "SandboxExecutionResult"]

_SHARED = "/app/shared"


class SandboxExecutionResult:
    """Container for sandbox execution results (the reference's result type).

    ``success`` is ``exit_code == 0 and error is None``. ``result`` holds the engine's
    full :class:`ExecutionResult` when the run reached the sandbox.
    """

    def __init__(
        self,
        stdout: str = "",
        stderr: str = "",
        exit_code: int = 0,
        execution_time: float = 0.0,
        error: Optional[str] = None,
    ):
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code
        self.execution_time = execution_time
        self.error = error
        self.success = exit_code == 0 and error is None
        self.result: Optional[ExecutionResult] = None

    def __repr__(self) -> str:
        return f"SandboxExecutionResult(exit_code={self.exit_code}, success={self.success})"

    def to_dict(self) -> dict[str, Any]:
        """Convert to dictionary representation."""
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "execution_time": self.execution_time,
            "error": self.error,
            "success": self.success,
        }


def _cpus(cpu_limit: Union[str, float, int]) -> float:
    try:
        return float(cpu_limit)
    except (TypeError, ValueError):
        err = InvalidConfigError(
            f"invalid cpus {cpu_limit!r}: must be a number of cores such as 1.0 or 0.5"
        )
        err.field, err.value = "cpus", str(cpu_limit)
        err.reason = "must be a number of cores such as 1.0 or 0.5"
        raise err from None


class BioCageManager:
    """Python sandbox manager with container lifecycle management, file/path exposure,
    and a clean execution interface (the reference API, on the Rust engine).

    ``start_container`` starts a persistent sandbox whose state persists between
    ``run`` calls; without one, ``run`` uses a fresh one-shot sandbox. The context
    manager starts a sandbox (with the settings of ``configure_context_manager``) and
    cleans up at the end.
    """

    def __init__(
        self,
        image_name: str = "biocage:latest",
        container_name_prefix: str = "biocage",
        runtime: str = "auto",
        *,
        allow_unenforced_limits: bool = False,
        verbose: bool = True,
    ):
        self.image_name = image_name
        self.container_name_prefix = container_name_prefix
        self.runtime = runtime
        self.allow_unenforced_limits = allow_unenforced_limits
        self.verbose = verbose
        self.container_id: Optional[str] = None
        self.container_name: Optional[str] = None
        # host_path -> {"container_path": str, "mount_option": ":ro" or ":rw"}
        self.exposed_paths: dict[str, dict[str, str]] = {}
        self.temp_files: list[str] = []  # host temporary files, removed by cleanup()
        self._context_manager_kwargs: dict[str, Any] = {}
        self._start_kwargs: dict[str, Any] = {}
        self._sandbox: Optional[Sandbox] = None
        self._sandbox_temp_files = 0
        self._ensure_image_exists()

    # -- helpers -----------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text)

    @property
    def is_running(self) -> bool:
        """Whether a persistent sandbox is started."""
        return self._sandbox is not None and not self._sandbox.closed

    def _ensure_image_exists(self) -> None:
        """Checks that the engine answers and has the image (raises
        EngineUnavailableError or ImageMissingError, both RuntimeErrors, if not)."""
        _native.check_image(self.runtime, self.image_name)

    def build_image(self, docker_build_dir: str = ".") -> None:
        """Builds the image from ``docker_build_dir`` (a folder with a Dockerfile) with
        the engine's command line, as the reference did."""
        engine = _native.engine_name(self.runtime)
        command = [engine]
        host = os.environ.get("CONTAINER_HOST")
        if engine == "podman" and host:
            command += ["--remote", "--url", host]
        self._say("Building BioCage image...")
        try:
            subprocess.run(
                [*command, "build", "-t", self.image_name, str(docker_build_dir)],
                check=True,
                capture_output=not self.verbose,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeError(f"Failed to build Docker image: {e}") from e
        self._say("Image built successfully!")

    def _exposures(self) -> list[Exposure]:
        return [
            Exposure(host, info["container_path"], info["mount_option"] != ":rw")
            for host, info in self.exposed_paths.items()
        ]

    def _config(
        self,
        memory_limit: Union[str, int] = "512m",
        cpu_limit: Union[str, float] = "1.0",
        network_access: bool = False,
        timeout: Optional[float] = None,
    ) -> SandboxConfig:
        options: dict[str, Any] = {
            "image": self.image_name,
            "memory": memory_limit,
            "cpus": _cpus(cpu_limit),
            "network": bool(network_access),
            "exposures": self._exposures(),
            "allow_unenforced_limits": self.allow_unenforced_limits,
        }
        if timeout is not None:
            options["timeout"] = timeout
        return SandboxConfig(**options)

    # -- lifecycle ---------------------------------------------------------------

    def start_container(
        self,
        memory_limit: str = "512m",
        cpu_limit: str = "1.0",
        network_access: bool = False,
    ) -> str:
        """Start a persistent sandbox whose state persists between runs.

        Args:
            memory_limit: Memory limit (e.g., "512m", "1g")
            cpu_limit: CPU limit (e.g., "1.0", "0.5"); above the host's core count it
                is held at that count
            network_access: Whether to allow network access

        Returns:
            Container ID
        """
        if self.is_running:
            raise RuntimeError("Container is already running. Call stop_container() first.")
        config = self._config(memory_limit, cpu_limit, network_access)
        self._sandbox = Sandbox(config, runtime=self.runtime)
        self._start_kwargs = {
            "memory_limit": memory_limit,
            "cpu_limit": cpu_limit,
            "network_access": network_access,
        }
        self._sandbox_temp_files = 0
        info = self._sandbox.info()
        self.container_id = info.container_id
        self.container_name = info.container_name
        self._say(f"Container started: {self.container_name} ({self.container_id[:12]})")
        return self.container_id

    def stop_container(self) -> None:
        """Stop the sandbox and remove its container."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None:
            return
        name = self.container_name
        try:
            if not sandbox.closed:
                sandbox.close()
                self._say(f"Container stopped and removed: {name}")
        except BioCageError as e:
            self._say(f"Warning: Failed to clean up container {name}: {e}")
        finally:
            self.container_id = None
            self.container_name = None
            self._sandbox_temp_files = 0

    def restart_container(self, **kwargs: Any) -> str:
        """Restart the container (stop if running, then start with ``kwargs``, the
        arguments of :meth:`start_container`). Returns the new container's ID."""
        if self.is_running:
            self.stop_container()
        return self.start_container(**kwargs)

    # -- files ---------------------------------------------------------------------

    def expose_path(
        self,
        host_path: Union[str, Path],
        container_path: Optional[str] = None,
        read_only: bool = True,
    ) -> str:
        """Expose a host path to the sandbox.

        Args:
            host_path: Path on the host system
            container_path: Path inside the sandbox (``/app/shared/<name>`` if None)
            read_only: Whether sandbox code may only read it (read-write: folders only;
                changes are copied back to the host after every run)

        Returns:
            The container path where the host path is mounted

        On a started sandbox the container is replaced to add the mount (no engine can
        add one to a running container): its state is lost (StateLostWarning).
        """
        host = Path(host_path).resolve()
        if not host.exists():
            raise FileNotFoundError(f"Host path does not exist: {host}")
        if container_path is None:
            container_path = f"{_SHARED}/{host.name}"
        key = str(host)
        previous = self.exposed_paths.get(key)
        self.exposed_paths[key] = {
            "container_path": container_path,
            "mount_option": ":ro" if read_only else ":rw",
        }
        try:
            self._config()  # checks the exposures now, not at the next start
        except InvalidConfigError:
            if previous is None:
                del self.exposed_paths[key]
            else:
                self.exposed_paths[key] = previous
            raise
        if self.is_running:
            self._say("Restarting container to apply new path mapping...")
            warnings.warn(
                f"exposing {host} on a started sandbox replaces its container: the "
                "interpreter's state is lost (expose paths before start_container)",
                StateLostWarning,
                stacklevel=2,
            )
            kwargs = dict(self._start_kwargs)
            self.stop_container()
            self.start_container(**kwargs)
        return container_path

    def expose_file(
        self, host_file_path: Union[str, Path], container_file_path: Optional[str] = None
    ) -> str:
        """Expose a single file to the sandbox, read-only. Returns its path there."""
        return self.expose_path(host_file_path, container_file_path, read_only=True)

    def expose_directory(
        self,
        host_dir_path: Union[str, Path],
        container_dir_path: Optional[str] = None,
        read_only: bool = True,
    ) -> str:
        """Expose a directory to the sandbox (read-only, or read-write). Returns its
        path there."""
        return self.expose_path(host_dir_path, container_dir_path, read_only)

    def create_temp_file(self, content: str, suffix: str = ".py") -> str:
        """Create a temporary file with ``content`` that the sandbox can read.

        On a started sandbox the file is written into it (under ``/tmp``; state kept);
        otherwise a host temporary file is exposed at ``/app/shared/<name>`` for the
        next sandbox. Returns the path in the sandbox.
        """
        if self.is_running and self._sandbox is not None:
            path = self._sandbox.create_temp_file(content, suffix)
            self._sandbox_temp_files += 1
            return path
        fd, name = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(content)
            self.temp_files.append(name)
            return self.expose_file(name)
        except Exception:
            with contextlib.suppress(OSError):
                os.unlink(name)
            if name in self.temp_files:
                self.temp_files.remove(name)
            raise

    # -- running -------------------------------------------------------------------

    def run(
        self,
        code: str,
        timeout: int = 30,
        stdin_input: Optional[str] = None,
        shutdown_on_failure: bool = True,
    ) -> SandboxExecutionResult:
        """Execute Python code in the sandbox.

        Args:
            code: Python code to execute
            timeout: Timeout in seconds
            stdin_input: Optional text the code reads as ``sys.stdin``
            shutdown_on_failure: Whether to stop the sandbox when the run fails

        Returns:
            SandboxExecutionResult with stdout, stderr, and metadata
        """
        start_time = time.time()
        try:
            if self.is_running:
                result = self._run_in_persistent_container(code, timeout, stdin_input)
            else:
                result = self._run_in_ephemeral_container(code, timeout, stdin_input)
            if shutdown_on_failure and not result.success:
                self._handle_execution_failure(result)
            return result
        except BioCageError as e:
            result = SandboxExecutionResult(
                error=f"Execution failed: {e!s}",
                exit_code=1,
                execution_time=time.time() - start_time,
            )
            if shutdown_on_failure:
                self._handle_execution_failure(result)
            return result

    @staticmethod
    def _with_stdin(sandbox: Sandbox, code: str, timeout: float, stdin_input: Optional[str]):
        if stdin_input is None:
            return sandbox.run(code, timeout=timeout)
        # sys.stdin is put back after every run: set it in the same run, one line above
        # the code (which moves the code's line numbers down by one).
        setup = (
            "import io as _biocage_io, sys as _biocage_sys; "
            f"_biocage_sys.stdin = _biocage_io.StringIO({stdin_input!r}); "
            "del _biocage_io, _biocage_sys"
        )
        return sandbox.run(setup + "\n" + textwrap.dedent(code), timeout=timeout)

    @staticmethod
    def _convert(
        r: ExecutionResult, timeout_message: str, persistent: bool
    ) -> SandboxExecutionResult:
        error: Optional[str] = None
        if r.error is not None:
            if r.error.kind == "timeout":
                error = timeout_message
            elif r.error.kind != "exception" or persistent:
                # The reference reports str(exception) for a persistent sandbox's
                # exceptions; its one-shot runs leave them to stderr and exit_code.
                error = r.error.message or r.error.name
        out = SandboxExecutionResult(
            stdout=r.stdout,
            stderr=r.stderr,
            exit_code=r.exit_code,
            execution_time=r.execution_time,
            error=error,
        )
        out.result = r
        return out

    def _run_in_persistent_container(
        self, code: str, timeout: float, stdin_input: Optional[str]
    ) -> SandboxExecutionResult:
        assert self._sandbox is not None
        r = self._with_stdin(self._sandbox, code, timeout, stdin_input)
        return self._convert(r, f"Code execution timed out after {timeout} seconds", True)

    def _run_in_ephemeral_container(
        self, code: str, timeout: float, stdin_input: Optional[str]
    ) -> SandboxExecutionResult:
        config = self._config(timeout=timeout)
        with Sandbox(config, runtime=self.runtime) as sandbox:
            r = self._with_stdin(sandbox, code, timeout, stdin_input)
        return self._convert(r, f"Container execution timed out after {timeout} seconds", False)

    def _handle_execution_failure(self, result: SandboxExecutionResult) -> None:
        """Reports a failed run and stops the sandbox (shutdown_on_failure)."""
        if result.exit_code == 124:
            failure_type = "timeout"
        elif result.error:
            failure_type = "error"
        elif result.stderr.strip():
            failure_type = "stderr_output"
        elif result.exit_code != 0:
            failure_type = "non_zero_exit"
        else:
            failure_type = "unknown"
        self._say(
            f"⚠️  Sandbox execution failed ({failure_type}). Shutting down container for safety."
        )
        if result.error:
            self._say(f"   Error: {result.error}")
        if result.stderr.strip():
            self._say(f"   Stderr: {result.stderr.strip()}")
        if result.exit_code != 0:
            self._say(f"   Exit code: {result.exit_code}")
        if self.is_running:
            try:
                self.stop_container()
                self._say("✅ Container shutdown completed.")
            except Exception as e:
                self._say(f"❌ Failed to shutdown container: {e}")

    # -- information and cleanup ---------------------------------------------------

    def get_container_info(self) -> dict[str, Any]:
        """Get information about the current container."""
        return {
            "container_id": self.container_id,
            "container_name": self.container_name,
            "is_running": self.is_running,
            "image_name": self.image_name,
            "exposed_paths": self.exposed_paths.copy(),
            "temp_files_count": len(self.temp_files) + self._sandbox_temp_files,
            "runtime": self._sandbox.runtime if self._sandbox is not None else self.runtime,
        }

    def cleanup(self) -> None:
        """Clean up resources (the sandbox, temporary files, exposed paths)."""
        if self.is_running or self._sandbox is not None:
            self.stop_container()
        for temp_file in self.temp_files:
            with contextlib.suppress(OSError):
                os.unlink(temp_file)
        self.temp_files.clear()
        self.exposed_paths.clear()

    def __enter__(self) -> BioCageManager:
        if not self.is_running:
            self.start_container(**self._context_manager_kwargs)
        return self

    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None:
        self.cleanup()

    def configure_context_manager(
        self,
        expose_files: Optional[dict[str, str]] = None,
        expose_directories: Optional[dict[str, str]] = None,
        expose_directories_rw: Optional[dict[str, str]] = None,
        **kwargs: Any,
    ) -> BioCageManager:
        """Configure the sandbox the ``with`` statement starts.

        Args:
            expose_files: {host_file_path: container_file_path} to expose (read-only)
            expose_directories: {host_dir_path: container_dir_path} (read-only)
            expose_directories_rw: {host_dir_path: container_dir_path} (read-write)
            **kwargs: Arguments for start_container() (memory_limit, cpu_limit,
                network_access)

        Returns:
            Self for method chaining
        """
        self._context_manager_kwargs = kwargs
        for host, target in (expose_files or {}).items():
            self.expose_file(host, target)
        for host, target in (expose_directories or {}).items():
            self.expose_directory(host, target, read_only=True)
        for host, target in (expose_directories_rw or {}).items():
            self.expose_directory(host, target, read_only=False)
        return self
