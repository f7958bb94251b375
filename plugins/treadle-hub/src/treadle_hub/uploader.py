"""Uploads in the background: one at a time, in order, retried with backoff, never raising into training.

A training step must never wait for the network, so ``submit`` only queues a job; a worker
thread runs the jobs one after the other (two commits racing for the same branch would make the
second one fail or pile up). While one upload runs, a newer save *replaces* the queued one of
the same kind instead of queueing behind it (``coalesce``), so a slow hub falls behind by at
most one upload and always ends up with the newest state; ``hub_always_push`` queues every one.

A failing upload is tried again ``retries`` times, waiting ``delay``, then twice as long, and so
on; an error that cannot heal (no permission, offline mode) is not retried. Then the job is
marked failed and ``on_failure`` reports it; nothing is raised, and the local files are never
touched. The worker thread starts with the first job and ends when the queue is empty, so an
idle plugin holds no thread and an interpreter exits only after the upload in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

logger = logging.getLogger("treadle.hub")

PENDING, RUNNING, DONE, FAILED, SUPERSEDED, CANCELLED = "pending", "running", "done", "failed", "superseded", "cancelled"


class PushJob:
    """One upload: what it is, how to run it, and (once finished) how it went. ``wait()`` blocks until then."""

    def __init__(
        self, description: str, run: Callable[[], str], *, kind: str, release: Optional[Callable[[], None]] = None
    ) -> None:
        self.description = description
        self.kind = kind
        self._run = run
        self._release = release
        self._finished = threading.Event()
        self.status = PENDING
        self.commit_url: Optional[str] = None
        self.error: Optional[str] = None
        self.attempts = 0

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the upload is finished (or ``timeout`` seconds passed); True when finished."""
        return self._finished.wait(timeout)

    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def ok(self) -> bool:
        return self.status == DONE

    def _finish(self, status: str, *, commit_url: Optional[str] = None, error: Optional[str] = None) -> None:
        self.status, self.commit_url, self.error = status, commit_url, error
        if self._release is not None:
            self._release()  # a held checkpoint may be rotated away from now on
        self._finished.set()

    def __repr__(self) -> str:
        return f"PushJob({self.description!r}, {self.status})"


class Uploader:
    """The queue and its worker thread."""

    def __init__(
        self,
        *,
        retries: int,
        delay: float,
        permanent: Callable[[BaseException], bool],
        explain: Callable[[BaseException], str],
        on_failure: Callable[[PushJob], None],
    ) -> None:
        self.retries, self.delay = retries, delay
        self._permanent, self._explain, self._on_failure = permanent, explain, on_failure
        self._cond = threading.Condition()
        self._queue: deque[PushJob] = deque()
        self._running: Optional[PushJob] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._closed = False

    def submit(self, job: PushJob, *, coalesce: bool) -> PushJob:
        """Queue ``job``; with ``coalesce``, it replaces a queued job of the same kind."""
        with self._cond:
            if self._closed:
                job._finish(CANCELLED, error="hub sync had stopped")
                return job
            if coalesce:
                for old in [queued for queued in self._queue if queued.kind == job.kind]:
                    self._queue.remove(old)
                    old._finish(SUPERSEDED, error=f"replaced by {job.description} before it started")
                    logger.info("hub: %s replaced by %s (an upload was still running)", old.description, job.description)
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="treadle-hub-upload", daemon=False)
                self._thread.start()
        return job

    def busy(self) -> bool:
        with self._cond:
            return bool(self._queue) or self._running is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing is queued or running (at most ``timeout`` seconds); True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, *, drop_queued: bool) -> list[PushJob]:
        """Take no more jobs and retry nothing more; with ``drop_queued``, also cancel the queued
        jobs (returned). The others still run, once each.

        The upload in flight finishes its current attempt: an HTTP request is not cut off, and
        a commit the hub received is whole or absent.
        """
        with self._cond:
            self._closed = True
            dropped = list(self._queue) if drop_queued else []
            if drop_queued:
                self._queue.clear()
        self._stop.set()
        for job in dropped:
            job._finish(CANCELLED, error="hub sync stopped before it started")
        return dropped

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                job = self._running = self._queue.popleft()
                job.status = RUNNING
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: PushJob) -> None:
        delay = self.delay
        for attempt in range(self.retries + 1):
            job.attempts = attempt + 1
            try:
                commit_url = job._run()
            except Exception as exc:  # whatever the client raises: the run must go on
                error = self._explain(exc)
                last = attempt == self.retries or self._permanent(exc) or self._stop.is_set()
                if not last:
                    logger.warning(
                        "hub: uploading %s failed (%s); trying again in %.3gs (retry %d of %d)",
                        job.description, error, delay, attempt + 1, self.retries,
                    )
                    if not self._stop.wait(delay):
                        delay *= 2
                        continue
                    error += "; hub sync stopped before the next try"
                job._finish(FAILED, error=error)
                self._on_failure(job)
                return
            job._finish(DONE, commit_url=commit_url)
            return
