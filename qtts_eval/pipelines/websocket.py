"""A candidate server reached over WebSocket at its /api/v1/speak endpoint."""

from __future__ import annotations

from qtts_eval.client import Channel, WebSocketChannel
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.remote import RemotePipeline


class WebSocketPipeline(RemotePipeline):
    """Options: ``url`` (ws://host:port/api/v1/speak; required), plus RemotePipeline's."""

    transport = "websocket"
    transport_options = frozenset({"url"})

    def open_channel(self) -> Channel:
        url = self.config.options.get("url")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise PipelineError(f"websocket: option 'url' must be a ws:// or wss:// URL, got {url!r}")
        return WebSocketChannel(url, self.timeouts.start_s)
