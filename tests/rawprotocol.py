"""A client that speaks gradio's wire protocol the way the browser does (and a hostile visitor
can): ``POST /gradio_api/queue/join`` with any ``fn_index`` and any JSON values, then the event
stream of ``/gradio_api/queue/data``. Used by test_hostile_requests.py.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass


@dataclass
class Answer:
    ok: bool                 # the event completed without an error
    message: str             # the error text (empty when ok)
    seconds: float           # from the join to the answer
    output: object = None    # the raw output of a completed event
    raw: str = ""            # the last message, as sent


def config(url: str) -> dict:
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        return json.loads(r.read())


def events(url: str) -> dict[int, dict]:
    """fn_index -> the event's description in the page's config (inputs are component ids)."""
    return {dep.get("id", i): dep for i, dep in enumerate(config(url)["dependencies"])}


def call(url: str, fn_index: int, data: list, timeout: float = 60.0, started=None) -> Answer:
    """Join the queue with ``data`` for event ``fn_index`` and wait for its completion message
    (``started``, a ``threading.Event``, is set when the server starts processing it)."""
    session = uuid.uuid4().hex[:11]
    body = json.dumps({"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
                       "session_hash": session}).encode()
    start = time.monotonic()
    request = urllib.request.Request(url + "gradio_api/queue/join", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            event_id = json.loads(r.read())["event_id"]
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        return Answer(False, f"HTTP {e.code}: {text}", time.monotonic() - start, raw=text)
    stream = urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=timeout)
    with stream:
        for line in stream:
            line = line.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") not in (None, event_id):
                continue
            if msg.get("msg") == "process_starts" and started is not None:
                started.set()
            if msg.get("msg") == "process_completed":
                output = msg.get("output") or {}
                error = output.get("error") if isinstance(output, dict) else None
                ok = bool(msg.get("success")) and not error
                return Answer(ok, "" if ok else str(error or "Error"), time.monotonic() - start, output, line)
            if msg.get("msg") == "unexpected_error":
                return Answer(False, str(msg.get("message")), time.monotonic() - start, raw=line)
            if msg.get("msg") == "process_streaming" and msg.get("output", {}).get("data") is not None:
                # a streaming event (the webcam) answers each input and stays open for the next: this is its answer
                return Answer(True, "", time.monotonic() - start, msg.get("output"), line)
            if time.monotonic() - start > timeout:
                break
    return Answer(False, "no answer", time.monotonic() - start)


def call_direct(url: str, fn_index: int, data: list, timeout: float = 60.0) -> Answer:
    """Call an event that skips the queue (``queue=False``) as the browser does: one POST."""
    body = json.dumps({"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
                       "session_hash": uuid.uuid4().hex[:11]}).encode()
    start = time.monotonic()
    request = urllib.request.Request(url + "gradio_api/run/predict", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            error = json.loads(text).get("error") or text
        except ValueError:
            error = text
        return Answer(False, str(error), time.monotonic() - start, raw=text)
    answer = json.loads(text)
    error = answer.get("error")
    return Answer(not error, str(error or ""), time.monotonic() - start, answer.get("data"), text)


def upload(url: str, path, timeout: float = 60.0) -> str:
    """Upload a file the way the page does; the server path gradio stored it at."""
    from pathlib import Path

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{Path(path).name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + Path(path).read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())[0]


def file_value(path: str, name: str = "photo.jpg") -> dict:
    """A file value as the page sends it for an upload."""
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
