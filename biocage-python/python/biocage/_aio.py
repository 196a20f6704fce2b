"""Hands results of the Rust engine to asyncio futures, on the event loop's thread."""

from __future__ import annotations

import asyncio
from typing import Any


def resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Completes ``future`` with ``value`` (a result, or an exception when not ``ok``).

    Called by the engine through ``loop.call_soon_threadsafe``. A future that was
    cancelled meanwhile is left alone; a sandbox made for it is closed.
    """
    if future.done():
        discard = getattr(value, "discard", None)
        if ok and callable(discard):
            discard()
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
