"""A candidate as a subprocess speaking the protocol over stdin/stdout (a Rust binary, a C++ program)."""

from __future__ import annotations

from qtts_eval.client import Channel, WorkerChannel
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.remote import RemotePipeline


class WorkerPipeline(RemotePipeline):
    """Options: ``command`` (a shell-style string or an argv list; required), plus RemotePipeline's."""

    transport = "worker"
    transport_options = frozenset({"command"})

    def open_channel(self) -> Channel:
        command = self.config.options.get("command")
        if not command:
            raise PipelineError("worker: option 'command' (the candidate's command line) is required")
        return WorkerChannel(command)
