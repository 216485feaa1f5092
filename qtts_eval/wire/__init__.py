"""Everything that speaks docs/protocol.md: messages and framing, the harness's client, the server that
exposes any pipeline, the worker and WebSocket pipelines, conformance rules, load tests, the faulty worker."""
