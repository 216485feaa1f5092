"""The bench matrix fanned out over a Ray cluster: one worker per GPU or CPU slot, records back to the driver.

The driver is the run's only writer. It builds the matrix exactly as a single-machine run does, skips what is
already recorded, and hands out one *cell group* at a time: every pipeline's request for one (text, voice,
mode, repeat), so pipelines stay interleaved on the worker that measures them. Each worker is a Ray actor that
loads its pipelines once (``Bench.measuring``) and measures with the same timing core and per-class warm-up as
a single-machine run, stamping its records with its own node's environment fingerprint. The driver appends and
fsyncs the records as each group comes back. A worker that dies loses only the group it had in flight: the
group goes to another worker (up to ``max_retries`` times) or, when no worker is left, stays for ``--resume``.
The driver records a request key at most once.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from qtts_eval import environment
from qtts_eval.bench import Bench, BenchConfig, Cell
from qtts_eval.errors import BenchError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.results import Record, RunStore

CLOSE_TIMEOUT_S = 60.0  # a worker closing its pipelines (stopping candidate processes) gets this long


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how to fan a bench out."""

    address: str  # Ray address: "auto" (a cluster this machine belongs to), "host:6379" or "ray://host:10001"
    gpus_per_worker: float = 0.0  # 1 on GPU clusters: one worker per card
    cpus_per_worker: float = 1.0  # CPU slots a worker reserves
    # Pin workers to one GPU type (Ray's accelerator_type, e.g. "H100"): runs on different cards never mix.
    accelerator_type: str | None = None
    workers: int | None = None  # how many workers; None = as many as the cluster's resources hold
    max_retries: int = 2  # times a group is handed out again after its worker died

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise BenchError("gpus_per_worker and cpus_per_worker must not be negative")
        if self.accelerator_type and not self.gpus_per_worker:
            raise BenchError("accelerator_type pins GPU workers: give gpus_per_worker too")
        if self.workers is not None and self.workers < 1:
            raise BenchError(f"workers must be at least 1, got {self.workers}")


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by (text, voice, mode, repeat), in matrix order; pipelines keep their interleaving."""
    grouped: dict[tuple[str, str, str, int], list[Cell]] = {}
    for cell in cells:
        grouped.setdefault((cell.text.id, cell.voice.id, cell.mode.value, cell.repeat), []).append(cell)
    return list(grouped.values())


class ClusterWorker:
    """One worker process on a cluster node (made a Ray actor by ``run_on_cluster``)."""

    def __init__(self, config: dict[str, Any], run_id: str, fixtures_hash: str, pipelines: list[str]) -> None:
        import ray

        fixtures = load_fixtures()
        if fixtures.content_hash != fixtures_hash:
            raise BenchError(
                f"node {environment.fingerprint()['hostname']}: its fixtures ({fixtures.content_hash[:12]}) "
                f"differ from the driver's ({fixtures_hash[:12]}); install the same qtts-eval on every node"
            )
        # Warm-up entries go to a scratch store on the node and travel back with each group's records.
        scratch = RunStore(Path(tempfile.mkdtemp(prefix="qtts-eval-worker-")) / run_id)
        scratch.create({"run_id": run_id, "config": config})
        self.bench = Bench(BenchConfig.from_json(config), scratch, fixtures)
        self.machine = {**environment.fingerprint(), "ray_node_id": ray.get_runtime_context().get_node_id()}
        self.warmups_sent = 0
        self._session = self.bench.measuring(pipelines)
        self._measure = self._session.__enter__()

    def measure(self, keys: list[str]) -> tuple[list[Record], list[dict[str, Any]]]:
        """Measure the cells with these request keys, in order; their records and any new warm-up entries."""
        by_key = {cell.key: cell for cell in self.bench.cells}
        records = [self._measure(by_key[key], self.machine) for key in keys]
        warmups = self.bench.store.warmups()
        new, self.warmups_sent = warmups[self.warmups_sent :], len(warmups)
        node = self.machine["ray_node_id"]
        return records, [{**entry, "ray_node_id": node} for entry in new]

    def close(self) -> None:
        self._session.__exit__(None, None, None)


def _worker_count(cluster: ClusterConfig) -> int:
    import ray

    if cluster.workers is not None:
        return cluster.workers
    resources = ray.cluster_resources()
    slots = []
    if cluster.gpus_per_worker:
        slots.append(resources.get("GPU", 0.0) / cluster.gpus_per_worker)
    if cluster.cpus_per_worker:
        slots.append(resources.get("CPU", 0.0) / cluster.cpus_per_worker)
    count = int(min(slots)) if slots else 0
    if count < 1:
        raise BenchError(
            f"the cluster at {cluster.address} has no room for one worker "
            f"({cluster.cpus_per_worker} CPU, {cluster.gpus_per_worker} GPU); its resources: {resources}"
        )
    return count


@dataclass
class _Dispatch:
    """A group in flight: which worker has it."""

    worker: Any
    group: list[Cell]


@contextlib.contextmanager
def _connected(address: str) -> Iterator[None]:
    import ray

    if ray.is_initialized():  # the caller (a notebook, a test) already connected
        yield
        return
    ray.init(address=address, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_on_cluster(bench: Bench, cluster: ClusterConfig, progress: bool = True) -> pd.DataFrame:
    """Measure the bench's unrecorded cells on the cluster; returns the whole run's records."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    unrecorded = bench.todo()
    todo = collections.deque(groups(unrecorded))
    recorded = {cell.key for cell in bench.cells} - {cell.key for cell in unrecorded}  # read once, by todo()
    header = bench.store.header()
    names = sorted({cell.pipeline for group in todo for cell in group})
    options: dict[str, Any] = {"num_cpus": cluster.cpus_per_worker, "num_gpus": cluster.gpus_per_worker}
    if cluster.accelerator_type:
        options["accelerator_type"] = cluster.accelerator_type
    retries: collections.Counter[tuple[str, ...]] = collections.Counter()
    with _connected(cluster.address):
        actor = ray.remote(ClusterWorker).options(max_restarts=0, max_concurrency=1, **options)
        args = (bench.config.to_json(), bench.run_id, header["fixtures_hash"], names)
        idle: list[Any] = [actor.remote(*args) for _ in range(_worker_count(cluster) if todo else 0)]
        in_flight: dict[Any, _Dispatch] = {}
        total = sum(map(len, todo))
        bar = tqdm(total=total, desc=f"bench {bench.run_id} (ray)", disable=not progress, file=sys.stderr)
        try:
            while todo or in_flight:
                while idle and todo:
                    worker, group = idle.pop(), todo.popleft()
                    in_flight[worker.measure.remote([cell.key for cell in group])] = _Dispatch(worker, group)
                if not in_flight:
                    break  # no worker left: what remains is for --resume
                (done,), _ = ray.wait(list(in_flight), num_returns=1)
                dispatch = in_flight.pop(done)
                try:
                    records, warmups = ray.get(done)
                except (ActorDiedError, ActorUnavailableError, RayActorError):
                    key = tuple(cell.key for cell in dispatch.group)
                    retries[key] += 1
                    if retries[key] <= cluster.max_retries:
                        todo.appendleft(dispatch.group)  # another worker takes it; this one is gone
                    continue
                for record in records:
                    if record.request_key not in recorded:
                        bench.store.append(record)
                        recorded.add(record.request_key)
                for entry in warmups:
                    bench.store.append_warmup(entry)
                bar.update(len(records))
                idle.append(dispatch.worker)
        finally:
            bar.close()
            # Idle workers close their pipelines (stopping candidate processes); then every worker goes.
            with contextlib.suppress(Exception):
                ray.get([worker.close.remote() for worker in idle], timeout=CLOSE_TIMEOUT_S)
            for worker in idle + [dispatch.worker for dispatch in in_flight.values()]:
                with contextlib.suppress(Exception):
                    ray.kill(worker)
    frame = bench.finish()
    missing = [cell.key for cell in bench.cells if cell.key not in recorded]
    if missing:
        # Every worker died (or gave up on these after max_retries): what was measured is kept and
        # summarised, and the run is not reported as complete.
        raise BenchError(
            f"{len(missing)} of {len(bench.cells)} requests were not recorded ({', '.join(missing)}); "
            f"resume the run to measure them: qtts-eval bench --resume {bench.store.directory}"
        )
    return frame
