"""Exceptions raised by biocage.

Failures *of the sandboxed code* (exceptions, timeouts, crashes, out of memory) are not
exceptions here: they come back as an :class:`biocage.ExecutionResult` with
``success=False``. These exceptions are for what goes wrong around the code: no
engine, no image, a configuration that is refused, a sandbox that broke.

Every exception's message is the engine's own, one sentence that says what to do.
All of them derive from :class:`BioCageError`, itself a :class:`RuntimeError`, so that
code written for the reference implementation (which raised ``RuntimeError``) keeps
working::

    BioCageError (RuntimeError)
    ├── EngineUnavailableError      no container engine answered
    ├── ImageMissingError           the sandbox image is not in the engine
    ├── InvalidConfigError          a setting is out of range (also a ValueError)
    ├── UnenforceableLimitError     the engine cannot hold a limit that was asked for
    ├── EngineError                 the engine refused or failed an operation
    ├── AgentError                  the agent inside the sandbox failed
    ├── FileTransferError           a file transfer was refused or failed
    ├── SandboxGoneError            the sandbox is gone (removed, killed); state lost
    └── SessionClosedError          the sandbox was closed

Attributes (``None`` when not known): ``engine``, ``endpoint``, ``reason``, ``hint``
(EngineUnavailableError); ``image``, ``engine``, ``build_command`` (ImageMissingError);
``field``, ``value``, ``reason`` (InvalidConfigError); ``limit``, ``engine``,
``reason`` (UnenforceableLimitError); ``engine``, ``action``, ``reason`` (EngineError).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AgentError",
    "BioCageError",
    "EngineError",
    "EngineUnavailableError",
    "FileTransferError",
    "ImageMissingError",
    "InvalidConfigError",
    "SandboxGoneError",
    "SessionClosedError",
    "StateLostWarning",
    "UnenforceableLimitError",
]


class BioCageError(RuntimeError):
    """Base class of every biocage exception (a ``RuntimeError``)."""

    engine: Optional[str] = None
    reason: Optional[str] = None


class EngineUnavailableError(BioCageError):
    """No container engine answered (Docker or Podman not running or not reachable).

    ``hint`` says how to start one.
    """

    endpoint: Optional[str] = None
    hint: Optional[str] = None


class ImageMissingError(BioCageError):
    """The sandbox image is not present in the engine; ``build_command`` builds it."""

    image: Optional[str] = None
    build_command: Optional[str] = None


class InvalidConfigError(BioCageError, ValueError):
    """A configuration value is out of range or malformed (also a ``ValueError``).

    ``field`` names the setting, ``value`` is what was given, ``reason`` what is accepted.
    """

    field: Optional[str] = None
    value: Optional[str] = None


class UnenforceableLimitError(BioCageError):
    """A limit was asked for that this engine cannot enforce (e.g. memory or cpu on
    rootless Podman with cgroup v1). Pass ``allow_unenforced_limits=True`` to start
    anyway; the limit is then reported as unenforced by ``info()``.
    """

    limit: Optional[str] = None


class EngineError(BioCageError):
    """The container engine refused or failed an operation (``action`` says which)."""

    action: Optional[str] = None


class AgentError(BioCageError):
    """The agent inside the sandbox failed or could not be started."""


class FileTransferError(BioCageError):
    """A file transfer (read_file, write_file, create_temp_file) was refused or failed."""


class SandboxGoneError(BioCageError):
    """The sandbox is gone (removed, killed, or lost with its engine), and its state
    with it; the next call on the same object starts a fresh sandbox."""


class SessionClosedError(BioCageError):
    """The sandbox was closed; create a new one."""


class StateLostWarning(UserWarning):
    """The sandbox's interpreter was replaced and earlier state is gone (e.g. a path
    was exposed on a started ``BioCageManager``, which needs a new container)."""
