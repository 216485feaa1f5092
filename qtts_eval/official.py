"""The first import of the official `qwen_tts` package, with its start-up notices reduced to one line.

At import the package prints a flash-attn banner on stdout and, through the `sox` package, a shell error and a
multi-line "SoX could not be found!" notice on stderr, straight to the file descriptors. A newcomer reads
them as failures and they split the suite's tables, so the import runs with both descriptors sent to a file,
and what was there is said in one line on stderr: known notices by what they mean, anything else by its
first line.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType
from typing import BinaryIO

# (text the notice contains, what it means for the suite)
KNOWN_NOTICES = (
    ("flash-attn is not installed", "flash-attn not installed: the reference uses PyTorch attention"),
    ("SoX could not be found", "SoX not found: unused by the suite"),
)
# The rest of those notices: the shell's half of the SoX one and its advice lines.
NOTICE_NOISE = ("sox: not found", "If you do", "sox.sourceforge", "path variables")


@contextlib.contextmanager
def _descriptors_to(file: BinaryIO) -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def summarise_notices(text: str) -> str:
    """One line for what an import printed ('' for nothing)."""
    said = [meaning for needle, meaning in KNOWN_NOTICES if needle in text]
    rest = [
        line.strip()
        for line in text.splitlines()
        if line.strip().strip("*").strip()
        and not any(needle in line for needle, _ in KNOWN_NOTICES)
        and not any(noise in line for noise in NOTICE_NOISE)
    ]
    if rest:
        said.append(f"it also printed {len(rest)} line(s), the first: {rest[0][:160]}")
    return f"qwen-tts import: {'; '.join(said)}" if said else ""


def qwen_tts() -> ModuleType:
    """The `qwen_tts` package, imported once; later calls return it at once."""
    if "qwen_tts" in sys.modules:
        return sys.modules["qwen_tts"]
    with tempfile.TemporaryFile() as captured:
        with _descriptors_to(captured):
            module = importlib.import_module("qwen_tts")
        captured.seek(0)
        line = summarise_notices(captured.read().decode(errors="replace"))
    if line:
        print(line, file=sys.stderr)
    return module
