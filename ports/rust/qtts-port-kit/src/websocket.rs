//! WebSocket transport (todo)
