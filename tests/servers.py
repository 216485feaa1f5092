"""Servers the tests start as real processes on loopback (the suite's own `serve`, the faulty worker)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator


def running_server(command: list[str], scheme: str) -> Iterator[str]:
    """Start a server that prints `listening on SCHEME://...`, yield its URL, stop it (killed if it will not
    stop: uvicorn waits on a planted hang's open response)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"listening on {scheme}://"), f"server did not come up: {line!r}"
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
