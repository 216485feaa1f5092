"""Energy arithmetic on fake power series: joules above idle per second of audio (no GPU involved)."""

from __future__ import annotations

import pytest

from qtts_eval.errors import MetricError
from qtts_eval.metrics.power import energy_above_idle_j, energy_columns, idle_power_w, sampling


def test_constant_power_above_idle_integrates_to_watts_times_seconds() -> None:
    samples = [(10.0 + 0.05 * i, 300.0) for i in range(41)]  # 2 s at 300 W
    assert energy_above_idle_j(samples, idle_w=100.0) == pytest.approx(400.0)
    columns = energy_columns(samples, idle_w=100.0, audio_seconds=4.0)
    assert columns["energy_j_per_audio_s"] == pytest.approx(100.0)
    assert columns["power_mean_w"] == pytest.approx(300.0) and columns["power_samples"] == 41


def test_a_ramp_and_uneven_spacing_integrate_exactly_by_trapezoids() -> None:
    # 100 W -> 300 W linearly over 1 s, sampled unevenly: the area above a 100 W idle is 100 J.
    times = [0.0, 0.1, 0.15, 0.5, 0.9, 1.0]
    samples = [(t, 100.0 + 200.0 * t) for t in times]
    assert energy_above_idle_j(samples, idle_w=100.0) == pytest.approx(100.0)
    # Below idle counts as negative: the figure is the request's energy above the idle board.
    assert energy_above_idle_j([(0.0, 90.0), (1.0, 90.0)], idle_w=100.0) == pytest.approx(-10.0)


def test_too_few_samples_or_no_audio_is_refused() -> None:
    with pytest.raises(MetricError, match="1 power sample"):
        energy_above_idle_j([(0.0, 200.0)], idle_w=100.0)
    with pytest.raises(MetricError, match="no audio"):
        energy_columns([(0.0, 200.0), (1.0, 200.0)], idle_w=100.0, audio_seconds=0.0)


def test_sampling_reads_at_both_ends_in_time_order_and_idle_is_the_median() -> None:
    readings = iter(range(1000))
    with sampling(lambda: float(next(readings))) as samples:
        pass
    assert len(samples) >= 2 and samples[0][1] == 0.0
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    assert idle_power_w(lambda: 42.0, seconds=0.1) == 42.0
