"""Admission: at most `max_concurrency` requests generate at once, at most `max_queue` wait.

A request takes its slot before it is tokenized and keeps it until the model is done with it
(specguard.serve.pipeline.GenerationRun releases it); beyond the queue the server answers 429.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import UsageError
from ..web.errors import QueueFullError
from ..web.metrics import ServerMetrics


class ConcurrencyLimiter:
    """At most `max_concurrency` holders; at most `max_queue` waiters; the rest get QueueFullError."""

    def __init__(self, max_concurrency: int = 1, max_queue: int = 8, metrics: ServerMetrics | None = None) -> None:
        if max_concurrency < 1:
            raise UsageError("max concurrency must be at least 1", field="--max-concurrency", got=max_concurrency)
        if max_queue < 0:
            raise UsageError("max queue must be non-negative", field="--max-queue", got=max_queue)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._metrics = metrics

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._semaphore

    def _gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.running.set(self.running)
            self._metrics.waiting.set(self.waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room; raise QueueFullError otherwise."""
        sem = self._sem()
        if self.running >= self.max_concurrency and self.waiting >= self.max_queue:
            raise QueueFullError(
                "server is busy: all generation slots are taken and the queue is full; retry later",
                field="queue", got=f"{self.running} running, {self.waiting} waiting",
                expected=f"at most {self.max_concurrency} running + {self.max_queue} waiting")
        self.waiting += 1
        self._gauges()
        try:
            await sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self._gauges()

    def release(self) -> None:
        self.running -= 1
        self._sem().release()
        self._gauges()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


__all__ = ["ConcurrencyLimiter"]
