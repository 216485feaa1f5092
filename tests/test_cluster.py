"""The bench fanned out over a real Ray cluster on loopback: a head and worker nodes started by the test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.cluster import ClusterConfig, run_on_cluster
from qtts_eval.errors import BenchError
from qtts_eval.results import RunStore, load_run

# Loopback only: without this Ray resolves 127.0.0.1 to the machine's network address when connecting (the
# switch Ray itself uses on macOS and Windows). Ray reads it at import, so it is set before.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray", reason="Ray is a test dependency: pip install -e '.[test]'")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
# One worker slot per node, Ray's smallest object store, bound to loopback.
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}
SLOW_CALIBRATION = {
    "first_chunk_ms": 150.0,
    "gap_ms": 10.0,
    "chunks": 2,
}  # ~0.2 s a request: time to kill a node


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    head = {**NODE, "num_cpus": 0, "include_dashboard": False}
    started = Cluster(initialize_head=True, connect=True, head_node_args=head)
    try:
        yield started
    finally:
        ray.shutdown()
        started.shutdown()


def _nodes(cluster: Cluster, count: int) -> list[Any]:
    nodes = [cluster.add_node(**NODE) for _ in range(count)]
    cluster.wait_for_nodes()
    return nodes


def _clear(cluster: Cluster) -> None:
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)


def _wait_for_records(directory: Path, count: int, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while sum(1 for _ in RunStore(directory).iter_records()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} records after {limit_s} s"
        time.sleep(0.05)


def test_a_sharded_run_gives_the_records_of_a_single_machine_run(cluster: Cluster, tmp_path: Path) -> None:
    _nodes(cluster, 2)
    try:
        config = BenchConfig(
            pipelines=("reference", "calibration"),
            fixtures=("en_one_word", "zh_short"),
            modes=("xvector",),
            repeats=2,
            speaker_embedder=None,
            options={"calibration.first_chunk_ms": 20.0, "calibration.chunks": 2},
        )
        local = Bench.create(config, tmp_path, "local").run(progress=False)
        sharded = run_on_cluster(
            Bench.create(config, tmp_path, "sharded"), ClusterConfig(address=cluster.address), progress=False
        )
    finally:
        _clear(cluster)
    assert sorted(sharded["request_key"]) == sorted(local["request_key"])
    assert set(sharded.columns) == {*local.columns, "env_ray_node_id"}  # the schema, plus the node
    assert (sharded["status"] == "ok").all()
    key = ["request_key", "frames_generated", "audio_seconds"]
    assert (
        sharded[key].sort_values("request_key").values.tolist()
        == local[key].sort_values("request_key").values.tolist()
    )
    assert sharded["env_ray_node_id"].nunique() == 2  # both nodes measured, each stamping its own fingerprint
    by_group = sharded.groupby(["fixture_id", "repeat"])["env_ray_node_id"].nunique()
    assert (by_group == 1).all()  # a group's pipelines are interleaved on one node


def test_a_node_killed_mid_run_loses_nothing_and_resume_completes_without_duplicates(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = BenchConfig(
        pipelines=("calibration",),
        fixtures=("en_short", "en_medium", "zh_short"),
        modes=("icl", "xvector"),
        repeats=3,  # 18 groups of one request
        speaker_embedder=None,
        options=SLOW_CALIBRATION,
    )
    bench = Bench.create(config, tmp_path, "run")
    (node,) = _nodes(cluster, 1)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            run_on_cluster(bench, ClusterConfig(address=cluster.address, max_retries=0), progress=False)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    _wait_for_records(tmp_path / "run", 3)
    cluster.remove_node(node, allow_graceful=False)  # the only worker dies with a group in flight
    driver.join(timeout=120)
    assert not driver.is_alive()
    partial = load_run(tmp_path / "run")
    assert 3 <= len(partial) < 18 and partial["request_key"].is_unique  # nothing measured was lost
    # A partial run is not a finished one: it lists what is missing and asks for a resume.
    (error,) = errors
    assert isinstance(error, BenchError) and "bench --resume" in str(error)
    missing = {cell.key for cell in bench.cells} - set(partial["request_key"])
    assert all(key in str(error) for key in missing)

    _nodes(cluster, 2)
    try:
        frame = run_on_cluster(
            Bench.resume(tmp_path / "run"), ClusterConfig(address=cluster.address), progress=False
        )
    finally:
        _clear(cluster)
    assert len(frame) == 18 and frame["request_key"].is_unique
    assert set(partial["request_key"]) <= set(frame["request_key"])
    assert (frame["status"] == "ok").all()


def test_a_dead_worker_s_group_goes_to_another_worker(cluster: Cluster, tmp_path: Path) -> None:
    config = BenchConfig(
        pipelines=("calibration",),
        fixtures=("en_short", "zh_short"),
        modes=("icl", "xvector"),
        repeats=3,  # 12 groups
        speaker_embedder=None,
        options=SLOW_CALIBRATION,
    )
    bench = Bench.create(config, tmp_path, "run")
    first, _second = _nodes(cluster, 2)
    result: list[Any] = []
    driver = threading.Thread(
        target=lambda: result.append(
            run_on_cluster(bench, ClusterConfig(address=cluster.address), progress=False)
        )
    )
    try:
        driver.start()
        _wait_for_records(tmp_path / "run", 2)
        cluster.remove_node(first, allow_graceful=False)
        driver.join(timeout=120)
    finally:
        _clear(cluster)
    (frame,) = result
    assert len(frame) == 12 and frame["request_key"].is_unique and (frame["status"] == "ok").all()
