"""The stage runtime: bounded queues between threads, the end marker, error propagation and stopping.

Below packets and the scoring package: the read-ahead of packets.iter_packets and the scoring chain
(scoring.chain) both run on it. The scoring messages are in scoring.messages.

Each stage is a plain function `stage(stages, ..., in_q, out_q)` that takes items with `stages.get`, hands
items on with `stages.put` and ends by putting DONE. An exception in any stage is recorded and sets the stop
flag; every queue wait polls that flag (raising Stopped inside the other stages), so no stage blocks forever
and the first error reaches the caller. Stages are callable on their own (a worker scoring one shard can run
the read, prep, engine and writer stages it needs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

POLL_S = 0.1  # how often a waiting stage looks at the stop flag


class Done:
    """The end of a stage's output: every item before it has been put."""

    def __repr__(self) -> str:
        return "DONE"


DONE = Done()


class Stopped(Exception):
    """Raised inside a stage when another stage failed (or the run was stopped)."""


class Stages:
    """Threads of one run, their shared stop flag and the errors they raised."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stop.set()

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def run(self, target: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run a stage in the calling thread; its error is recorded, not raised (see raise_error)."""
        try:
            target(*args, **kwargs)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by raise_error
            self.fail(exc)

    def thread(self, name: str, target: Callable[..., object], *args: Any, **kwargs: Any) -> threading.Thread:
        """Start a stage in its own (daemon) thread."""
        t = threading.Thread(target=self.run, args=(target, *args), kwargs=kwargs, name=name, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def finish(self) -> None:
        """Stop every stage and wait for its thread."""
        self.stop.set()
        for t in self.threads:
            # Stages stop within one chunk or one engine call; wait for them even through a second Ctrl-C, so
            # the process never exits while a native library is still running in another thread.
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt:
                    pass

    def raise_error(self) -> None:
        """Raise the first error any stage raised, if one did."""
        if self.errors:
            raise self.errors[0]


class Progress(Protocol):
    """What a run tells as it goes (the command line's progress bar)."""

    def add_packets(self, n: int) -> None: ...

    def add_bytes(self, n: int) -> None: ...

    def file_done(self, n: int = 1) -> None: ...
