"""The roofline floor: weight bytes per frame from a checkpoint's shapes, over a measured bandwidth."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qtts_eval import checkpoints
from qtts_eval.checkpoints.build import preset_weight_shapes
from qtts_eval.checkpoints.presets import PRESETS, Preset
from qtts_eval.compare import to_text
from qtts_eval.errors import MetricError
from qtts_eval.metrics.roofline import (
    Roofline,
    checkpoint_code_groups,
    checkpoint_weight_shapes,
    measure_bandwidth,
    weight_traffic,
)
from qtts_eval.summary import roofline_table


def _layer_elements(preset: Preset) -> int:
    """One Qwen3 decoder layer, written out from the preset's sizes: q/o, k/v, q/k norms, the MLP, 2 norms."""
    hidden, heads, head = preset.talker_hidden, preset.talker_heads, preset.head_dim
    kv = preset.talker_kv_heads
    attention = 2 * hidden * heads * head + 2 * hidden * kv * head + 2 * head
    return attention + 3 * hidden * preset.talker_intermediate + 2 * hidden


def _expected_bytes(preset: Preset, element: int) -> tuple[int, int]:
    """(talker, code predictor) weight bytes per frame by hand: 16 code groups, 15 predictor passes, each
    pass its own 2048-way head; the talker's codec head has 3072 outputs."""
    hidden = preset.talker_hidden
    talker = preset.talker_layers * _layer_elements(preset) + hidden + 3072 * hidden
    predictor = 15 * (preset.predictor_layers * _layer_elements(preset) + hidden) + 15 * 2048 * hidden
    return talker * element, predictor * element


@pytest.fixture(scope="module")
def full_shapes() -> dict[str, tuple[int, ...]]:
    return preset_weight_shapes("0.6b-base")  # meta device: the builder's own construction, no 2.4 GB


def test_0_6b_base_reads_3_3_gb_per_frame_in_bf16_and_twice_that_in_fp32(full_shapes) -> None:
    bf16 = weight_traffic(full_shapes, 16, "bfloat16")
    assert (bf16.talker_bytes, bf16.predictor_bytes) == _expected_bytes(PRESETS["0.6b-base"], 2)
    assert bf16.predictor_passes == 15
    # The figures: talker ~0.89 GB, 15 code-predictor passes ~2.4 GB, 3.3 GB in all.
    assert round(bf16.talker_bytes / 1e9, 2) == 0.89
    assert round(bf16.predictor_bytes / 1e9, 1) == 2.4
    assert round(bf16.total_bytes / 1e9, 1) == 3.3
    assert weight_traffic(full_shapes, 16, "float32").total_bytes == 2 * bf16.total_bytes
    assert round(weight_traffic(full_shapes, 16, "float32").total_bytes / 1e9, 1) == 6.6


def test_a_built_checkpoints_header_holds_the_builders_shapes() -> None:
    tiny = checkpoints.resolve("tiny").path
    shapes = checkpoint_weight_shapes(tiny)
    assert shapes == preset_weight_shapes("tiny")
    assert checkpoint_code_groups(tiny) == 16
    traffic = weight_traffic(shapes, 16, "float32")
    assert (traffic.talker_bytes, traffic.predictor_bytes) == _expected_bytes(PRESETS["tiny"], 4)


def test_an_unknown_precision_or_a_foreign_checkpoint_gets_no_floor(full_shapes) -> None:
    with pytest.raises(MetricError, match="precision 'int3'"):
        weight_traffic(full_shapes, 16, "int3")
    columns, why = Roofline(full_shapes, 16, 1e12).columns("int3")
    assert columns == {} and "int3" in why["roofline_weight_bytes_per_frame"]
    speaker_only = {name: shape for name, shape in full_shapes.items() if name.startswith("speaker_encoder.")}
    with pytest.raises(Exception, match="not a Qwen3-TTS checkpoint"):
        weight_traffic(speaker_only, 16, "bfloat16")


def test_the_floor_is_bytes_over_bandwidth(full_shapes) -> None:
    columns, why = Roofline(full_shapes, 16, 4.0e12).columns("bfloat16")
    assert why == {}
    assert columns["roofline_floor_frame_s"] == columns["roofline_weight_bytes_per_frame"] / 4.0e12
    assert columns["roofline_floor_frame_s"] == pytest.approx(0.83e-3, rel=0.01)  # 3.31 GB at 4 TB/s


def test_cpu_bandwidth_is_measured() -> None:
    bandwidth = measure_bandwidth("cpu")
    assert math.isfinite(bandwidth) and bandwidth > 1e8  # any memory system moves more than 100 MB/s


def _records(pipeline: str, wall_s: float, floor_s: float | None) -> list[dict[str, object]]:
    return [
        {
            "pipeline": pipeline,
            "status": "ok",
            "fixture_id": "en_short",
            "voice_id": "slt",
            "mode": "icl",
            "repeat": repeat,
            "wall_s": wall_s,
            "frames_generated": 10,
            "work_talker_precision": "bfloat16",
            "roofline_weight_bytes_per_frame": None if floor_s is None else 3.3e9,
            "roofline_bandwidth_bytes_per_s": None if floor_s is None else 3.3e9 / floor_s,
            "roofline_floor_frame_s": floor_s,
        }
        for repeat in range(3)
    ]


def test_the_summary_and_compare_show_ms_per_frame_against_the_floor() -> None:
    frame = pd.DataFrame(_records("reference", 0.5, 0.001) + _records("port", 0.2, 0.001))
    table = roofline_table(frame).set_index("pipeline")
    assert table.loc["reference", "ms_per_frame"] == pytest.approx(50.0)
    assert table.loc["reference", "x_floor"] == pytest.approx(50.0)
    assert table.loc["port", "x_floor"] == pytest.approx(20.0)
    assert table.loc["port", "bandwidth_gb_s"] == pytest.approx(3300.0)

    from qtts_eval.compare import Side, compare

    candidate = frame[frame["pipeline"] == "port"]
    rows = compare(Side("port", candidate), Side("reference", frame[frame["pipeline"] == "reference"]))
    text = to_text(rows)
    assert "20.0 (20.0x floor)" in text and "50.0 (50.0x floor)" in text
    no_floor = pd.DataFrame(_records("reference", 0.5, None) + _records("port", 0.2, None))
    assert roofline_table(no_floor).empty
    assert "20.0 " in to_text(
        compare(Side("port", no_floor[no_floor["pipeline"] == "port"]), Side("ref", no_floor[:3]))
    )
