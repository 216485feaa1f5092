"""What every port adapter shares: the facts of the checkpoint the suite handed over, and their report."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from qtts_eval.pipelines.base import Pipeline


@dataclass(frozen=True)
class SourceCheckpoint:
    """Options every adapter receives from the suite-side candidate pipeline about its source checkpoint."""

    weights_hash: str = ""  # sha256 of the checkpoint the port's weights came from
    synthetic: bool = False  # that checkpoint has random weights
    model_ref: str = ""  # the model ref the user gave


class PortAdapter(Pipeline):
    """A public port behind the pipeline protocol (served by the worker shim); its options extend
    SourceCheckpoint."""

    options: SourceCheckpoint

    @abstractmethod
    def implementation(self) -> str:
        """The port and the distribution it came from, with its version."""

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            implementation=self.implementation(),
            weights_hash=self.options.weights_hash,
            synthetic=self.options.synthetic,
            model_ref=self.options.model_ref,
        )
        return info
