"""What runs and sessions return: typed views of the engine's JSON contract."""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

from ._native import Exposure

__all__ = ["ExecutionError", "ExecutionResult", "LimitStatus", "SessionInfo"]


class _Record:
    """Attributes from a dict of the contract, compared and printed by value."""

    __slots__ = ("_raw",)
    _fields: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        # Fields added to the contract after this version still read as attributes.
        raw = object.__getattribute__(self, "_raw")
        if name in raw:
            return raw[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._raw == self._raw  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The record as the engine's JSON contract (a new dict)."""
        return json.loads(json.dumps(self._raw))

    def to_json(self) -> str:
        """The record as the engine's JSON contract."""
        return json.dumps(self._raw)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({shown})"


class ExecutionError(_Record):
    """Why a run did not succeed.

    Attributes:
        kind: ``"exception"`` (the code raised; state kept), ``"timeout"`` (the run hit
            its time limit), ``"oom"`` (out of memory), ``"crashed"`` (the interpreter
            died; state lost), ``"exit"`` (``sys.exit`` with a non-zero status, where
            the engine reports it so) or ``"sandbox"`` (the sandbox itself failed).
        name: the exception type or signal name (``"ValueError"``, ``"SIGSEGV"``), if any.
        message: a readable message (``str()`` of the exception).
        traceback: the traceback of the user's frames, if any.
        line: line of a ``SyntaxError``.
        offset: column (1-based) of a ``SyntaxError``, where the engine reports it.
        truncated: the message or the traceback went over its cap and was cut.
    """

    __slots__ = ("kind", "line", "message", "name", "offset", "traceback", "truncated")
    _fields = ("kind", "name", "message", "line")

    kind: str
    name: Optional[str]
    message: str
    traceback: Optional[str]
    line: Optional[int]
    offset: Optional[int]
    truncated: bool

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self.kind = raw.get("kind", "sandbox")
        self.name = raw.get("name")
        self.message = raw.get("message", "")
        self.traceback = raw.get("traceback")
        self.line = raw.get("line")
        self.offset = raw.get("offset")
        self.truncated = bool(raw.get("truncated", False))

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.name else self.message


class ExecutionResult(_Record):
    """What one run produced (the engine's result contract).

    Attributes:
        success: the code ran to the end without raising.
        stdout, stderr: what was written to fd 1 and fd 2 during the run (capped).
        stdout_truncated, stderr_truncated: the output cap was reached.
        exit_code: 0 ok, 1 exception, 124 timeout, 137 killed or out of memory.
        execution_time: wall time of the run, in seconds.
        error: ``None`` on success, else an :class:`ExecutionError`.
        state_lost: the interpreter was replaced; earlier state is gone.
        value: ``repr()`` of the last expression's value, when it is not ``None``.
        value_truncated: the value's repr went over its cap.
        images: PNG figures left open by matplotlib, as ``bytes``.
        images_truncated: figures were left out (count, size or pixel caps).
        displays: rich outputs (``display(obj)`` calls, then the last value), each a
            dict from MIME type to data, where the engine reports them.
        displays_truncated: displays were left out.
    """

    __slots__ = (
        "displays",
        "displays_truncated",
        "error",
        "execution_time",
        "exit_code",
        "images",
        "images_truncated",
        "state_lost",
        "stderr",
        "stderr_truncated",
        "stdout",
        "stdout_truncated",
        "success",
        "value",
        "value_truncated",
    )
    _fields = ("success", "exit_code", "execution_time", "stdout", "stderr", "error")

    success: bool
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int
    execution_time: float
    error: Optional[ExecutionError]
    state_lost: bool
    value: Optional[str]
    value_truncated: bool
    images: list[bytes]
    images_truncated: bool
    displays: list[dict[str, str]]
    displays_truncated: bool

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self.success = raw["success"]
        self.stdout = raw["stdout"]
        self.stderr = raw["stderr"]
        self.stdout_truncated = raw.get("stdout_truncated", False)
        self.stderr_truncated = raw.get("stderr_truncated", False)
        self.exit_code = raw["exit_code"]
        self.execution_time = raw["execution_time"]
        err = raw.get("error")
        self.error = ExecutionError(err) if err is not None else None
        self.state_lost = raw.get("state_lost", False)
        self.value = raw.get("value")
        self.value_truncated = raw.get("value_truncated", False)
        images = raw.get("images")
        self.images = [base64.b64decode(i["data"]) for i in images] if images else []
        self.images_truncated = raw.get("images_truncated", False)
        self.displays = raw.get("displays") or []
        self.displays_truncated = raw.get("displays_truncated", False)

    @classmethod
    def from_json(cls, text: str) -> ExecutionResult:
        """A result from the engine's JSON (as ``to_json`` or ``biocage --json`` give)."""
        return cls(json.loads(text))


class LimitStatus(_Record):
    """One limit of a session and how it is held.

    Attributes:
        name: ``"memory"``, ``"swap"``, ``"pids"``, ``"cpu"``, ``"timeout"``,
            ``"network"``, ...
        value: the configured value, readable (``"512m"``, ``"1"``, ``"off"``).
        enforcement: ``"engine"`` (cgroup or namespace), ``"rlimit"``, ``"agent"``,
            or ``"unenforced"`` (allowed only with ``allow_unenforced_limits``).
        mechanism: the concrete mechanism, for people.
    """

    __slots__ = ("enforcement", "mechanism", "name", "value")
    _fields = ("name", "value", "enforcement")

    name: str
    value: str
    enforcement: str
    mechanism: str

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self.name = raw["name"]
        self.value = raw["value"]
        self.enforcement = raw["enforcement"]
        self.mechanism = raw.get("mechanism", "")


class SessionInfo(_Record):
    """What a live sandbox reports about itself.

    Attributes:
        session_id: the session's id.
        runtime: the engine (``"docker"`` or ``"podman"``).
        container_id, container_name: the container.
        is_running: whether the container is running.
        image: the image.
        exposed_paths: the host paths shown in the sandbox (:class:`Exposure` objects).
        temp_files: temporary files made with ``create_temp_file``.
        limits: every limit and how it is enforced (:class:`LimitStatus` objects).
        python_version: Python in the sandbox.
        user: ``uid:gid`` that runs the code.
        runs: runs done so far.
    """

    __slots__ = (
        "container_id",
        "container_name",
        "exposed_paths",
        "image",
        "is_running",
        "limits",
        "python_version",
        "runs",
        "runtime",
        "session_id",
        "temp_files",
        "user",
    )
    _fields = ("session_id", "runtime", "container_name", "is_running", "image")

    session_id: str
    runtime: str
    container_id: str
    container_name: str
    is_running: bool
    image: str
    exposed_paths: list[Exposure]
    temp_files: int
    limits: list[LimitStatus]
    python_version: str
    user: str
    runs: int

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self.session_id = raw["session_id"]
        self.runtime = raw["runtime"]
        self.container_id = raw["container_id"]
        self.container_name = raw["container_name"]
        self.is_running = raw["is_running"]
        self.image = raw["image"]
        self.exposed_paths = [
            Exposure(e["host"], e["container"], e.get("mode") != "read_write")
            for e in raw.get("exposed_paths", [])
        ]
        self.temp_files = raw.get("temp_files", 0)
        self.limits = [LimitStatus(lim) for lim in raw.get("limits", [])]
        self.python_version = raw.get("python_version", "")
        self.user = raw.get("user", "")
        self.runs = raw.get("runs", 0)

    def limit(self, name: str) -> Optional[LimitStatus]:
        """The limit called ``name`` (``"memory"``, ``"cpu"``, ...), if reported."""
        for lim in self.limits:
            if lim.name == name:
                return lim
        return None
