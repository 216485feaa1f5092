"""Servers the tests start on loopback: real processes (the suite's own `serve`, the faulty worker), or the
suite's server code in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any


def running_server(command: list[str], scheme: str) -> Iterator[str]:
    """Start a server that prints `listening on SCHEME://...`, yield its URL, stop it (killed if it will not
    stop within 5 s: uvicorn waits on a planted hang's open response; a clean stop takes under a second)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"listening on {scheme}://"), f"server did not come up: {line!r}"
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def serving_in_thread(serve: Callable[[Callable[[str], None]], Coroutine[Any, Any, None]]) -> Iterator[str]:
    """Run an asyncio server (`serve(on_listening)`, e.g. serve_speak) on loopback in a thread of this
    process, yield its URL, cancel it: the suite's real server code without a process start per fault."""
    urls: queue.Queue[str] = queue.Queue()
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(urls.put))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    try:
        yield urls.get(timeout=30)
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server thread did not stop"
