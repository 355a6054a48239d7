"""The live webcam's streams: each holds one of a few slots while it is open, so a stream that
stops sending frames gives its slot back after a few idle seconds, and one visitor (one page
session) holds at most one stream at a time.

Gradio keeps a streaming event's slot until its ``time_limit`` runs out, waiting for the next
frame for as long as that; it has no idle timeout and no per-session limit. :class:`StreamPolicy`
adds both to the app's queue: the wait for a stream's next frame is cut to ``idle_seconds``
(the stream then ends as if its time were up), and joining a stream from a session that already
has one open is refused with a message.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from gradio.queueing import Queue

log = logging.getLogger("mtan.app.requests")

DEFAULT_LIVE_STREAMS = 4         # webcam streams at once
DEFAULT_LIVE_SECONDS = 120       # a stream ends after this long (Record starts another)
DEFAULT_LIVE_IDLE_SECONDS = 5.0  # a stream that sends no frame for this long ends, giving its slot back
ONE_STREAM = ("This page already has a live webcam stream open: stop it (or close its other tab) before "
              "starting another.")

_original_wait_for_batch = Queue.wait_for_batch
_idle_by_fn: dict[int, float] = {}  # id of a streaming BlockFunction -> its idle timeout


async def _wait_for_batch(events, timeouts):
    timeouts = [min(t, _idle_by_fn.get(id(e.fn), t)) for e, t in zip(events, timeouts)]
    return await _original_wait_for_batch(events, timeouts)


@dataclass(frozen=True)
class StreamPolicy:
    """Idle timeout and one stream per session for the streaming events named ``api_names``."""

    api_names: tuple[str, ...]
    idle_seconds: float = DEFAULT_LIVE_IDLE_SECONDS

    def install(self, blocks) -> None:
        """Apply the policy to ``blocks`` (after its events are defined and ``blocks.queue()`` ran)."""
        fns = [fn for fn in blocks.fns.values() if fn.api_name in self.api_names]
        missing = set(self.api_names) - {fn.api_name for fn in fns}
        if missing:
            raise ValueError(f"StreamPolicy: no event named {sorted(missing)}")
        for fn in fns:
            _idle_by_fn[id(fn)] = float(self.idle_seconds)
        Queue.wait_for_batch = staticmethod(_wait_for_batch)
        queue = blocks._queue
        original_push = queue.push
        streaming = {id(fn) for fn in fns}

        async def push(body, request, username):
            session = getattr(body, "session_hash", None)
            if session is not None and body.fn_index is not None and id(blocks.fns.get(body.fn_index)) in streaming:
                open_ids = queue.pending_event_ids_session.get(session, set())
                if any(id(getattr(queue.event_ids_to_events.get(i), "fn", None)) in streaming
                       and not getattr(queue.event_ids_to_events.get(i), "closed", True) for i in open_ids):
                    log.info("refused live_frame: a second stream from one session")
                    return False, ONE_STREAM, "error"
            return await original_push(body, request, username)

        queue.push = push


__all__ = ["StreamPolicy", "DEFAULT_LIVE_STREAMS", "DEFAULT_LIVE_SECONDS", "DEFAULT_LIVE_IDLE_SECONDS", "ONE_STREAM"]
