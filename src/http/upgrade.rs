//! The HTTP request that opens MQTT over WebSockets (RFC 6455 §4.2, MQTT
//! 5.0 §6), read before any HTTP server sees the connection. An upgrade on
//! `/mqtt` is answered here and the connection becomes a WebSocket; any
//! other request is handed on whole, to the device HTTPS endpoint.
//!
//! The request head is bounded ([`MAX_HEAD`]) and read under the caller's
//! deadline, the one that also covers TLS and CONNECT.

use crate::sql::eval::base64_encode;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head read: AWS's SigV4 query and headers fit well
/// within it.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most headers a request may have.
const MAX_HEADERS: usize = 64;

/// RFC 6455's key suffix.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The upgrade request, as the authentication that follows needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The path, without the query.
    pub path: String,
    /// The query, without its `?`.
    pub query: String,
    /// The headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Upgrade {
    /// A header's value (the first of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the first request on a connection turned out to be.
#[derive(Debug)]
pub enum Opening {
    /// An upgrade to MQTT over WebSockets, not yet answered (see
    /// [`accept`]); `early` holds what the client sent after its request.
    WebSocket {
        /// The request.
        request: Upgrade,
        /// Bytes after the request head.
        early: Vec<u8>,
    },
    /// Any other request: every byte read, for the HTTP server.
    Http(Vec<u8>),
    /// A request that cannot be served: `status` and why, to answer with
    /// [`refuse`].
    Refused {
        /// The HTTP status.
        status: u16,
        /// Why, in words.
        why: &'static str,
    },
}

/// Reads the first request's head and tells what it is. `Ok(None)` if the
/// client closed before it sent one.
pub async fn open<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Opening>> {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let opening = classify(&req, buf[len..].to_vec());
                return Ok(Some(match opening {
                    Some(o) => o,
                    None => Opening::Http(buf),
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Some(Opening::Refused {
                    status: 431,
                    why: "too many request headers",
                }));
            }
            // Not HTTP: the HTTP server says so in its own words.
            Err(_) => return Ok(Some(Opening::Http(buf))),
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Some(Opening::Refused {
                status: 431,
                why: "the request head is too large",
            }));
        }
        let len = buf.len();
        buf.resize(MAX_HEAD, 0);
        let n = stream.read(&mut buf[len..]).await?;
        buf.truncate(len + n);
        if n == 0 {
            return Ok((!buf.is_empty()).then_some(Opening::Http(buf)));
        }
    }
}

/// An upgrade on `/mqtt`, checked; `None` for any other request.
fn classify(req: &httparse::Request<'_, '_>, early: Vec<u8>) -> Option<Opening> {
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let request = Upgrade {
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
    };
    let has_token = |name: &str, token: &str| {
        request
            .header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return None;
    }
    let refused = |status, why| Some(Opening::Refused { status, why });
    if path != "/mqtt" {
        return refused(404, "MQTT over WebSockets is served on /mqtt");
    }
    if req.method != Some("GET") {
        return refused(405, "a WebSocket upgrade is a GET");
    }
    if !has_token("connection", "upgrade") {
        return refused(400, "Connection does not name Upgrade");
    }
    if request.header("sec-websocket-version") != Some("13") {
        return refused(426, "Sec-WebSocket-Version is not 13");
    }
    if request
        .header("sec-websocket-key")
        .is_none_or(str::is_empty)
    {
        return refused(400, "Sec-WebSocket-Key is missing");
    }
    if !has_token("sec-websocket-protocol", "mqtt") {
        return refused(400, "Sec-WebSocket-Protocol does not offer mqtt");
    }
    Some(Opening::WebSocket { request, early })
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64_encode(digest.as_ref())
}

/// Answers an upgrade with 101, subprotocol `mqtt`: from here on the
/// connection is a WebSocket.
pub async fn accept<S: AsyncWrite + Unpin>(stream: &mut S, request: &Upgrade) -> io::Result<()> {
    let key = request.header("sec-websocket-key").unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        accept_key(key)
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await
}

/// Answers a request that cannot be served, and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    why: &str,
) -> io::Result<()> {
    let reason = match status {
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let version = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\n{version}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn opened(request: &str) -> Opening {
        let mut bytes = request.as_bytes();
        open(&mut bytes).await.expect("read").expect("a request")
    }

    const UPGRADE: &str = "GET /mqtt?X-Amz-Date=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n";

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn an_upgrade_on_mqtt_keeps_its_query_headers_and_early_bytes() {
        let Opening::WebSocket { request, early } = opened(&format!("{UPGRADE}\x02\x00")).await
        else {
            panic!("not an upgrade");
        };
        assert_eq!(
            (request.path.as_str(), request.query.as_str()),
            ("/mqtt", "X-Amz-Date=1")
        );
        assert_eq!(request.header("host"), Some("localhost"));
        assert_eq!(early, b"\x02\x00");
    }

    #[tokio::test]
    async fn other_requests_are_handed_on_whole_and_bad_upgrades_refused() {
        let get = "GET /things/lamp/shadow HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(opened(get).await, Opening::Http(b) if b == get.as_bytes()));
        let cases = [
            (UPGRADE.replace("/mqtt", "/other"), 404),
            (UPGRADE.replace("GET", "POST"), 405),
            (UPGRADE.replace("Version: 13", "Version: 8"), 426),
            (UPGRADE.replace("mqttv3.1, mqtt", "wamp"), 400),
            (UPGRADE.replace("keep-alive, Upgrade", "keep-alive"), 400),
        ];
        for (request, want) in cases {
            match opened(&request).await {
                Opening::Refused { status, .. } => assert_eq!(status, want, "{request}"),
                other => panic!("{request}: {other:?}"),
            }
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            opened(&huge).await,
            Opening::Refused { status: 431, .. }
        ));
    }
}
