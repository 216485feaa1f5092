"""Energy of one request: the GPU board's power sampled while it runs, the run's idle power subtracted.

On CUDA a thread reads the board power through NVML every SAMPLE_PERIOD_S while a request runs; the idle
power is the median of IDLE_SECONDS of readings taken once, after the pipelines load and before the first
request. The energy above idle is the trapezoid integral of (power - idle) over the request's samples, and
per second of audio it compares requests of any length (docs/metrics.md). The board is shared by every
process on it, so the figure is the card's, not one process's. Without NVML or a GPU there are no columns,
and the record's metric_error says why.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qtts_eval.errors import MetricError

SAMPLE_PERIOD_S = 0.05  # at most every 100 ms (NVML's reading may itself average over a longer window)
IDLE_SECONDS = 1.0  # idle readings taken before the first request
Sample = tuple[float, float]  # (seconds on the monotonic clock, watts)


def energy_above_idle_j(samples: Sequence[Sample], idle_w: float) -> float:
    """Trapezoid integral of (power - idle) over the samples, in joules; refused under two samples."""
    if len(samples) < 2:
        raise MetricError(f"{len(samples)} power sample(s): too few to integrate")
    return sum(
        (t1 - t0) * ((w0 - idle_w) + (w1 - idle_w)) / 2 for (t0, w0), (t1, w1) in itertools.pairwise(samples)
    )


def energy_columns(samples: Sequence[Sample], idle_w: float, audio_seconds: float) -> dict[str, Any]:
    """The energy record columns of one request."""
    if audio_seconds <= 0:
        raise MetricError("no audio: energy per second of audio is undefined")
    return {
        "energy_j_per_audio_s": energy_above_idle_j(samples, idle_w) / audio_seconds,
        "power_mean_w": statistics.fmean(watts for _, watts in samples),
        "power_idle_w": idle_w,
        "power_samples": len(samples),
    }


def idle_power_w(read: Callable[[], float], seconds: float = IDLE_SECONDS) -> float:
    """Median board power over ``seconds`` of readings while nothing runs."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(read())
        time.sleep(SAMPLE_PERIOD_S)
    return statistics.median(readings)


@contextmanager
def sampling(read: Callable[[], float]) -> Iterator[list[Sample]]:
    """Samples ``read`` every SAMPLE_PERIOD_S on a thread while the block runs, one at each end too; the
    list is complete once the block has exited."""
    samples: list[Sample] = [(time.monotonic(), read())]
    done = threading.Event()

    def loop() -> None:
        while not done.wait(SAMPLE_PERIOD_S):
            samples.append((time.monotonic(), read()))

    thread = threading.Thread(target=loop, name="power-sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append((time.monotonic(), read()))
