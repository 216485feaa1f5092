"""Server dialects other than the suite's own protocol: clients (pipelines) and servers (docs/dialects.md)."""
