"""The official package's start-up notices reach the terminal as one line (qtts_eval/official.py)."""

from __future__ import annotations

import subprocess
import sys

from qtts_eval.official import summarise_notices

SOX_NOTICE = """/bin/sh: 1: sox: not found
SoX could not be found!

    If you do not have SoX, proceed here:
     - - - http://sox.sourceforge.net/ - - -

    If you do (or think that you should) have SoX, double-check your
    path variables.
"""
FLASH_BANNER = """
********
Warning: flash-attn is not installed. Will only run the manual PyTorch version. Please install flash-attn.
********
"""


def test_known_notices_become_one_line_and_unknown_output_is_named() -> None:
    line = summarise_notices(FLASH_BANNER + SOX_NOTICE)
    assert line == (
        "qwen-tts import: flash-attn not installed: the reference uses PyTorch attention; "
        "SoX not found: unused by the suite"
    )
    assert summarise_notices("") == ""
    surprise = summarise_notices(SOX_NOTICE + "RuntimeWarning: something new\nand more\n")
    assert "2 line(s), the first: RuntimeWarning: something new" in surprise


def test_importing_the_real_package_prints_one_line_and_nothing_on_stdout() -> None:
    code = "from qtts_eval import official; official.qwen_tts(); official.qwen_tts()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("qwen-tts import:")
