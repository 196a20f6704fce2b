"""BioCage: secure, stateful Python sandboxes for model-generated code.

Each sandbox is a hardened container (no network, read-only root, no capabilities,
memory, cpu, process and time limits) with one live Python interpreter in it, whose
state persists between runs. The engine is written in Rust and drives Docker or
rootless Podman.

The native API::

    import biocage

    with biocage.Sandbox(memory="1g", timeout=10) as sb:
        sb.run("import numpy as np; a = np.arange(10)")
        result = sb.run("print(a.sum())")
        print(result.stdout, result.exit_code, result.error)

    async with biocage.AsyncSandbox() as sb:          # asyncio
        result = await sb.run("print('hi')")

The reference API (drop-in for the original ``biocage`` package)::

    from biocage import BioCageManager

    with BioCageManager() as sandbox:
        result = sandbox.run("print('Hello from sandbox!')")

Errors of the sandbox itself raise subclasses of :class:`BioCageError`; failures of
the sandboxed code come back as results with ``success=False``.
"""

from __future__ import annotations

import atexit as _atexit

from . import _native
from ._native import Exposure, SandboxConfig
from ._types import ExecutionError, ExecutionResult, LimitStatus, SessionInfo
from .biocage_manager import BioCageManager, SandboxExecutionResult
from .errors import (
    AgentError,
    BioCageError,
    EngineError,
    EngineUnavailableError,
    FileTransferError,
    ImageMissingError,
    InvalidConfigError,
    SandboxGoneError,
    SessionClosedError,
    StateLostWarning,
    UnenforceableLimitError,
)
from .sandbox import AsyncSandbox, Sandbox, capabilities, list_sandboxes

__version__: str = _native.__version__

__all__ = [
    "AgentError",
    "AsyncSandbox",
    "BioCageError",
    "BioCageManager",
    "EngineError",
    "EngineUnavailableError",
    "ExecutionError",
    "ExecutionResult",
    "Exposure",
    "FileTransferError",
    "ImageMissingError",
    "InvalidConfigError",
    "LimitStatus",
    "Sandbox",
    "SandboxConfig",
    "SandboxExecutionResult",
    "SandboxGoneError",
    "SessionClosedError",
    "SessionInfo",
    "StateLostWarning",
    "UnenforceableLimitError",
    "capabilities",
    "list_sandboxes",
]

# Sandboxes still open when the interpreter exits are closed (their containers removed).
_atexit.register(_native.close_all)
