"""compare refuses incomparable sides, shows and flags baseline errors, and notes the budget convention."""

from __future__ import annotations

import pandas as pd
import pytest

from qtts_eval import compare
from qtts_eval.errors import ResultsError


def _records(pipeline: str, frames: int = 40, **columns: object) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": "r1",
            "pipeline": pipeline,
            "fixture_id": "en_short",
            "voice_id": "slt",
            "mode": "xvector",
            "repeat": list(range(6)),
            "status": "ok",
            "error": None,
            "frame_budget": 41,
            "frames_generated": frames,
            "first_byte_s": 0.4,
            "first_playable_s": 0.8,
            "rtf": 1.0,
            "codes_digest": "d",
            "env_gpu_name": "NVIDIA H100",
            "env_git_commit": "c1",
            **columns,
        }
    )


def test_a_baseline_run_on_another_gpu_is_refused() -> None:
    current, before = _records("port"), _records("port", env_gpu_name="NVIDIA A100", run_id="r0")
    with pytest.raises(ResultsError, match=r"different gpu_name.*--may-differ env_gpu_name"):
        compare.between_runs(current, before, "port")
    allowed = compare.between_runs(current, before, "port", may_differ=["env_gpu_name"])
    assert not compare.flagged(compare.compare(*allowed))


def test_all_reference_errors_are_shown_and_flagged() -> None:
    failed = _records("reference", status="error", error="RuntimeError: out of memory")
    frame = pd.concat([failed, _records("port")], ignore_index=True)
    sides = compare.within_run(frame, "port")
    table = compare.compare(*sides)
    assert compare.flagged(table) and "baseline_errors" in table["flags"].iloc[0]
    assert "baseline errors" in compare.to_text(table)
    assert any(
        "6 of 6 requests failed" in line and "out of memory" in line for line in compare.error_lines(*sides)
    )


def test_each_side_s_paired_records_leave_out_a_mode_the_candidate_refused() -> None:
    # A port that refuses ICL: the reference's ICL requests (slower here) must not enter its side's median.
    reference = pd.concat(
        [_records("reference"), _records("reference", mode="icl", first_byte_s=2.0)], ignore_index=True
    )
    refused = _records("port", mode="icl", status="unsupported", error="UnsupportedRequest: no ICL")
    frame = pd.concat([reference, _records("port", first_byte_s=0.2), refused], ignore_index=True)
    cand, base = compare.ok_pairs(*compare.within_run(frame, "port"))
    assert len(cand) == len(base) == 6 and set(base["mode"]) == {"xvector"}
    assert base["first_byte_s"].median() == pytest.approx(0.4)  # not 1.2, the median over both modes
    assert list(cand["repeat"]) == list(base["repeat"])


def test_the_whole_budget_convention_is_a_note_and_a_runaway_a_flag() -> None:
    honest = pd.concat([_records("reference"), _records("port", frames=41)], ignore_index=True)
    table = compare.compare(*compare.within_run(honest, "port"))
    assert table["notes"].iloc[0] == "whole_budget" and not compare.flagged(table)
    runaway = pd.concat([_records("reference", frames=20), _records("port", frames=41)], ignore_index=True)
    assert "stops_later" in compare.compare(*compare.within_run(runaway, "port"))["flags"].iloc[0]


def test_whole_budget_codes_match_a_served_reference_on_the_common_frames() -> None:
    """Against a baseline that is not the run's in-process reference only digests exist: a port's whole
    budget (41 frames) is paired through the digest of its first 40 with the baseline's 40."""
    served = _records("served-reference", codes_digest="first-40")
    same = _records("port", frames=41, codes_digest="all-41", codes_digest_trimmed="first-40")
    table = compare.compare(*compare.within_run(pd.concat([served, same]), "port", "served-reference"))
    assert table["codes_match"].iloc[0] == 1.0 and not compare.flagged(table)
    other = _records("port", frames=41, codes_digest="all-41", codes_digest_trimmed="another-40")
    table = compare.compare(*compare.within_run(pd.concat([served, other]), "port", "served-reference"))
    assert "codes_differ" in table["flags"].iloc[0]


SAME_WORK = {
    "work_prompt": "cached",
    "work_delivery": "streamed",
    "work_packet_frames": 4,
    "work_layout": "text_streamed",
    "work_instrumentation": "none",
    "work_threads": 2,
    "work_talker_precision": "float32",
    "work_codec_precision": "float32",
    "peak_mem_kind": "process_rss",
    "peak_mem_bytes": 1_000_000,
}


@pytest.mark.parametrize(
    ("planted", "flag"),
    [
        ({"work_prompt": "built"}, "prompt_cache_differs"),
        ({"work_delivery": "whole"}, "delivery_differs"),
        ({"work_packet_frames": 2}, "delivery_differs"),
        ({"work_threads": 1}, "threads_differ"),
        ({"peak_mem_kind": "worker_tree_rss"}, "memory_kind_differs"),
        ({"work_layout": "text_up_front"}, "layout_differs"),
        ({"work_instrumentation": "debug_dump_dir"}, "instrumentation_differs"),
        ({"work_talker_precision": "bfloat16"}, "precision_differs"),
    ],
)
def test_each_planted_work_difference_is_named_on_the_row(planted: dict[str, object], flag: str) -> None:
    frame = pd.concat(
        [_records("reference", **SAME_WORK), _records("port", **{**SAME_WORK, **planted})], ignore_index=True
    )
    table = compare.compare(*compare.within_run(frame, "port"))
    assert table["flags"].iloc[0].split(",") == [flag]
    assert compare.work_differs(table) == [f"(all)/(all): {flag}", f"en_short/xvector: {flag}"]
    if flag == "memory_kind_differs":  # bytes of two kinds never divide
        assert pd.isna(table["peak_mem_bytes_ratio"].iloc[0])


def test_same_work_has_no_flag_and_the_budget_convention_is_a_note() -> None:
    same = pd.concat([_records("reference", **SAME_WORK), _records("port", **SAME_WORK)], ignore_index=True)
    table = compare.compare(*compare.within_run(same, "port"))
    assert not compare.flagged(table) and compare.work_differs(table) == []
    assert table["peak_mem_bytes_ratio"].iloc[0] == pytest.approx(1.0)
    convention = pd.concat(
        [
            _records("reference", **SAME_WORK, work_budget_convention="n_minus_1"),
            _records("port", frames=41, **SAME_WORK, work_budget_convention="n"),
        ],
        ignore_index=True,
    )
    table = compare.compare(*compare.within_run(convention, "port"))
    assert not compare.flagged(table)
    assert table["notes"].iloc[0] == "whole_budget,budget_convention_differs"
