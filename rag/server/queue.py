"""Fair access to the language model for `rag serve`: a bounded first-come-first-served line, and the
thread that runs one generation and can be stopped.

Why: the first server ran every request - validation, retrieval, abstention and generation - under one
lock, in whatever order threads woke up. Under 20 concurrent requests every non-streaming request went
before any stream got its first token, off-topic questions that abstain without the model waited for the
lock, /health waited behind the queued requests (its sync handler needed a worker thread behind the
blocked ones), and a client that disconnected kept the model busy. Here:

- A request takes a `Ticket` when it arrives, before retrieval, so its place in line is its arrival
  order. Retrieval and the abstention decision run meanwhile; a request that turns out to need no model
  leaves the line without waiting. A request that needs the model `want()`s it (a full line raises
  `QueueFull`: the server answers 429 with Retry-After) and `wait()`s until it is the oldest waiting
  ticket and a model slot is free. Tickets whose retrieval has not finished keep their place.
- Everything here runs on the event loop (no locks); worker threads hand results back with
  `loop.call_soon_threadsafe`.
- `GenerationRun` iterates an answer's stream (rag.answering.stream) in its own thread and releases the slot
  the moment the model is done (attribution, which needs only the embedder, happens after). `stop()` cancels the
  stream: the in-process model abandons its forward pass at the next decoder layer, whether it is
  streaming, reading the prompt or scoring a grounded answer's quote candidates; the slot is released
  once it has: a hang-up frees the model within a decoder layer, not after the next token or the whole
  quote scoring (bench/load.py measures it; docs/guide/serve.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rag.answering.answer import Answer
from rag.answering.stream import AnswerStream


class QueueFull(Exception):
    """The line for the model is full; `retry_after` is a whole number of seconds to wait before retrying."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model")
        self.waiting = waiting
        self.retry_after = retry_after


class Ticket:
    """One request's place in line, from arrival until it has used the model (or left)."""

    def __init__(self, queue: ModelQueue, number: int) -> None:
        self.queue = queue
        self.number = number
        self.state = "reserved"  # reserved -> wanting -> running -> done; or -> done when it leaves early
        self._granted: asyncio.Future[None] = queue.loop.create_future()
        self._started = 0.0

    def want(self) -> None:
        """Ask for the model (call once, on the event loop).

        :raises QueueFull: when `max_waiting` requests already wait; the ticket has then left the line.
        """
        self.queue._want(self)

    async def wait(self) -> None:
        """Wait for this ticket's turn; cancelling the wait (a client that left) gives the place up."""
        try:
            await asyncio.shield(self._granted)
        except asyncio.CancelledError:
            self.leave()
            raise

    @property
    def position(self) -> int:
        """How many tickets are ahead in line (0 = next or running)."""
        return self.queue._position(self)

    def leave(self, stopped: bool = False) -> None:
        """Give up the place in line, or the model slot if it was granted (idempotent, event loop only).

        :param stopped: the generation was stopped before its end (the client left); counted in stats().
        """
        self.queue._leave(self, stopped)

    def release_threadsafe(self, stopped: bool = False) -> None:
        """`leave()` from a worker thread."""
        self.queue.loop.call_soon_threadsafe(self.leave, stopped)


class ModelQueue:
    """First come, first served access to `slots` model slots, with at most `max_waiting` requests waiting.

    Create it on the event loop that uses it (FastAPI's startup does).
    """

    def __init__(self, slots: int = 1, max_waiting: int = 16, first_guess_s: float = 5.0) -> None:
        if slots < 1 or max_waiting < 0:
            raise ValueError("slots must be >= 1 and max_waiting >= 0")
        self.slots = slots
        self.max_waiting = max_waiting
        self.loop = asyncio.get_running_loop()
        self._line: deque[Ticket] = deque()  # reserved or wanting, in arrival order
        self._running = 0
        self._numbers = 0
        self._service_s = first_guess_s  # moving average of how long a request holds the model
        self.served = 0
        self.refused = 0
        self.stopped = 0

    def reserve(self) -> Ticket:
        """A place in line for a request that has just arrived (it may turn out not to need the model)."""
        self._numbers += 1
        ticket = Ticket(self, self._numbers)
        self._line.append(ticket)
        return ticket

    @property
    def waiting(self) -> int:
        """Requests that need the model and wait for it."""
        return sum(1 for t in self._line if t.state == "wanting")

    @property
    def running(self) -> int:
        """Requests holding a model slot."""
        return self._running

    def retry_after(self) -> int:
        """Seconds until a place is likely to free up: the line's length times the mean service time."""
        return max(1, min(600, math.ceil(self._service_s * (self.waiting + 1) / self.slots)))

    def stats(self) -> dict[str, Any]:
        """What /health reports."""
        return {"waiting": self.waiting, "running": self._running, "slots": self.slots,
                "max_waiting": self.max_waiting, "served": self.served, "refused": self.refused,
                "stopped": self.stopped,
                "mean_service_s": round(self._service_s, 2)}

    def _want(self, ticket: Ticket) -> None:
        if ticket.state != "reserved":
            return
        if self.waiting >= self.max_waiting:
            self.refused += 1
            retry = self.retry_after()
            self._leave(ticket)
            raise QueueFull(self.max_waiting, retry)
        ticket.state = "wanting"
        self._dispatch()

    def _position(self, ticket: Ticket) -> int:
        for ahead, t in enumerate(self._line):
            if t is ticket:
                return ahead
        return 0

    def _leave(self, ticket: Ticket, stopped: bool = False) -> None:
        if ticket.state == "done":
            return
        if ticket.state == "running":
            self._running -= 1
            if stopped:
                self.stopped += 1
            else:
                held = time.monotonic() - ticket._started
                self._service_s = 0.7 * self._service_s + 0.3 * held
                self.served += 1
        else:
            try:
                self._line.remove(ticket)
            except ValueError:
                pass
            if not ticket._granted.done():
                ticket._granted.cancel()
        ticket.state = "done"
        self._dispatch()

    def _dispatch(self) -> None:
        # Strict arrival order: a ticket still retrieving at the head keeps later ones waiting (briefly).
        while self._running < self.slots and self._line and self._line[0].state == "wanting":
            ticket = self._line.popleft()
            ticket.state = "running"
            ticket._started = time.monotonic()
            self._running += 1
            if not ticket._granted.done():
                ticket._granted.set_result(None)


class GenerationRun:
    """Iterate an AnswerStream in a worker thread and hand its pieces to the event loop.

    Events, in order: ("piece", str)..., then ("done", Answer) or ("error", BaseException). The model slot
    is released (`on_model_free(stopped)`, called in the worker thread) as soon as generation ends or has
    been stopped; `stopped` says whether it was cut short.
    """

    def __init__(self, response: AnswerStream, on_model_free: Callable[[bool], None]) -> None:
        self.response = response
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._on_model_free = on_model_free
        self._thread = threading.Thread(target=self._work, name="rag-serve-generation", daemon=True)

    def start(self) -> GenerationRun:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the generation (any thread): the in-process model stops within a decoder layer, even while
        reading the prompt; other backends after the piece the worker is waiting for."""
        self._stop.set()
        self.response.cancel()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True when it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def _work(self) -> None:
        resp = self.response
        freed = False
        try:
            for piece in resp:
                if self._stop.is_set():
                    break
                self._emit("piece", piece)
            finished = not self._stop.is_set()  # a cancelled model ends the iteration early, without error
            resp.close()  # a no-op after a finished generation; stops the model after a stop()
            self._on_model_free(not finished)
            freed = True
            if not finished:
                return
            answer: Answer = resp.answer()
            self._emit("done", answer)
        except Exception as exc:  # noqa: BLE001 - handed to the event loop, which answers with an error
            with contextlib.suppress(Exception):  # the error being reported matters more than a second one
                resp.close()
            self._emit("error", exc)  # after a stop() this is the model's GenerationCancelled: nobody reads it
        finally:
            if not freed:
                self._on_model_free(self._stop.is_set())
