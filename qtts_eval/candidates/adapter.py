"""What every port adapter shares: the facts of the checkpoint the suite handed over, and their report."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from qtts_eval.pipelines.base import Pipeline, Request


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

    def prompt_layout(self, request: Request) -> bool:
        """The non_streaming_mode layout `request` runs in (refused when the port cannot build it)."""
        from qtts_eval.candidates.registry import candidate

        return candidate(self.label).prompt_layout(request)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            implementation=self.implementation(),
            weights_hash=self.options.weights_hash,
            synthetic=self.options.synthetic,
            model_ref=self.options.model_ref,
        )
        return info
