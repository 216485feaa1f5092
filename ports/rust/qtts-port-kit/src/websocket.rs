//! The WebSocket transport (feature `websocket`): `ws://HOST:PORT/api/v1/speak`, one connection per session,
//! JSON control messages in text frames and audio in binary frames; sessions share the loaded worker, one
//! utterance at a time, as in the suite's server.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error, Message, WebSocket};

use crate::framing::MAX_FRAME_BYTES;
use crate::protocol::SPEAK_PATH;
use crate::server::{Host, Incoming, ServeOptions, Transport, Worker};

/// How long `poll` waits for a client message during an utterance (a cancel check per audio frame).
const POLL_WAIT: Duration = Duration::from_millis(1);

/// One WebSocket connection as a protocol transport.
pub struct WebSocketTransport {
    socket: WebSocket<TcpStream>,
}

impl WebSocketTransport {
    fn next(&mut self, wait: Option<Duration>) -> Option<Incoming> {
        if let Err(error) = self.socket.get_ref().set_read_timeout(wait) {
            return Some(Incoming::Broken(error.to_string()));
        }
        loop {
            return match self.socket.read() {
                Ok(Message::Text(text)) => Some(Incoming::Text(text)),
                Ok(Message::Binary(data)) => Some(Incoming::Binary(data)),
                Ok(Message::Close(_)) => Some(Incoming::Closed),
                Ok(_) => continue, // ping, pong, raw frames: handled by tungstenite
                Err(Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if wait.is_some() {
                        None
                    } else {
                        continue;
                    }
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_)) => Some(Incoming::Closed),
                Err(error) => Some(Incoming::Broken(format!("malformed WebSocket message: {error}"))),
            };
        }
    }

    fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self
            .socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(1)));
        while self.socket.read().is_ok() {} // until the client's close frame (or a second) has passed
    }
}

impl Transport for WebSocketTransport {
    fn receive(&mut self) -> Incoming {
        self.next(None).unwrap_or(Incoming::Closed)
    }

    fn poll(&mut self) -> Option<Incoming> {
        self.next(Some(POLL_WAIT))
    }

    fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.socket
            .send(Message::Text(text.to_owned()))
            .map_err(io::Error::other)
    }

    fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.socket
            .send(Message::Binary(data.to_vec()))
            .map_err(io::Error::other)
    }
}

#[allow(clippy::result_large_err)] // the signature tungstenite's handshake callback requires
fn only_speak_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == SPEAK_PATH {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(format!("the endpoint is {SPEAK_PATH}\n")));
    *refusal.status_mut() = StatusCode::NOT_FOUND;
    Err(refusal)
}

/// Load the worker, listen on `bind` (e.g. "127.0.0.1:0" for a free port), tell `on_listening` the URL, and
/// serve every connection on a thread of its own until the process ends.
pub fn serve_websocket<W, E>(
    load: impl FnOnce() -> Result<W, E>,
    options: ServeOptions,
    bind: &str,
    on_listening: impl FnOnce(&str),
) -> Result<(), Box<dyn std::error::Error>>
where
    W: Worker + Send + 'static,
    E: Into<Box<dyn std::error::Error>>,
{
    let listener = TcpListener::bind(bind)?;
    let host = Arc::new(Host::new(load().map_err(Into::into)?, options));
    on_listening(&format!("ws://{}{SPEAK_PATH}", listener.local_addr()?));
    let config = WebSocketConfig {
        max_message_size: Some(MAX_FRAME_BYTES),
        max_frame_size: Some(MAX_FRAME_BYTES),
        ..WebSocketConfig::default()
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let host = Arc::clone(&host);
        std::thread::spawn(move || {
            match tungstenite::accept_hdr_with_config(stream, only_speak_path, Some(config)) {
                Ok(socket) => {
                    let mut transport = WebSocketTransport { socket };
                    if let Err(error) = host.serve_session(&mut transport) {
                        eprintln!("websocket session ended: {error}");
                    }
                    transport.close();
                }
                Err(error) => eprintln!("websocket handshake refused: {error}"),
            }
        });
    }
    Ok(())
}
