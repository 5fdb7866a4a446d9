//! MQTT over WebSockets (RFC 6455, MQTT 5.0 §6): the byte stream MQTT reads
//! and writes, carried in binary frames.
//!
//! MQTT does not care where frames begin or end (a frame may hold part of a
//! packet or several), so the adapter streams: a data frame's payload is
//! unmasked where it was read, straight into the reader's buffer, and
//! whatever the session writes goes out as one binary frame. Pings are
//! answered, pongs ignored, a close is answered and ends the stream. A text
//! frame ends the connection (MQTT-6.0.0-1), and so do frames or
//! fragmented messages larger than the packet limit.
//!
//! The same stream serves the load tool as a client, which masks what it
//! sends and expects nothing masked. The upgrade itself is HTTP's, and
//! lives in `http::upgrade`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most socket bytes read ahead while looking for a frame header.
const READ_CHUNK: usize = 4 * 1024;

/// Most payload sent as one frame; a larger write is taken in parts.
const WRITE_CHUNK: usize = 64 * 1024;

/// Close codes (RFC 6455 §7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A protocol error: bad framing, an unmasked frame, a bad opcode.
    pub const PROTOCOL: u16 = 1002;
    /// Data of a type the endpoint cannot accept: text, for MQTT.
    pub const UNSUPPORTED: u16 = 1003;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Which end of the connection a stream is: a server's peer masks every
/// frame, a client's never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway.
    Server,
    /// A client, masking what it sends with this key.
    Client([u8; 4]),
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The masking key, if masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes the header took.
    pub size: usize,
}

/// Why a frame is refused, with the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Reserved bits set, an unknown opcode, an unmasked frame, a control
    /// frame fragmented or over 125 bytes, a continuation out of place.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text frame: MQTT travels in binary frames only.
    #[error("WebSocket text frame: MQTT travels in binary frames")]
    Text,
    /// A frame or fragmented message over the packet limit.
    #[error("WebSocket message larger than the packet limit")]
    TooBig,
}

impl FrameError {
    /// The close code that tells the client.
    pub fn code(self) -> u16 {
        match self {
            Self::Protocol(_) => close::PROTOCOL,
            Self::Text => close::UNSUPPORTED,
            Self::TooBig => close::TOO_BIG,
        }
    }
}

/// Reads a frame's header from the front of `buf`, as `role` receives it
/// (a server only masked frames, a client only unmasked ones): `None`
/// until it is all there.
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::Protocol("a client frame is not masked")),
        (Role::Client(_), true) => return Err(FrameError::Protocol("a server frame is masked")),
        _ => {}
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        match buf.get(at..at + 4) {
            Some(m) => Some([m[0], m[1], m[2], m[3]]),
            None => return Ok(None),
        }
    } else {
        None
    };
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE | PING | PONG if !fin => {
            return Err(FrameError::Protocol("a control frame is fragmented"));
        }
        CLOSE | PING | PONG if len > 125 => {
            return Err(FrameError::Protocol("a control frame is over 125 bytes"));
        }
        CLOSE | PING | PONG => {}
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        size: at + if masked { 4 } else { 0 },
    }))
}

/// Masks or unmasks `data`, the payload bytes from `offset` on, eight at a
/// time.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// Appends a frame holding `payload`, as `role` sends it (a client's
/// masked).
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], role: Role) {
    out.push(0x80 | opcode);
    let masked = match role {
        Role::Server => 0,
        Role::Client(_) => 0x80,
    };
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len();
    if let Role::Client(mask) = role {
        out.extend_from_slice(&mask);
        out.extend_from_slice(payload);
        unmask(&mut out[start + 4..], mask, 0);
    } else {
        out.extend_from_slice(payload);
    }
}

/// The data frame being read.
#[derive(Debug, Default)]
struct Frame {
    mask: Option<[u8; 4]>,
    /// Payload bytes not yet read.
    left: u64,
    /// Payload bytes read so far.
    done: u64,
}

/// A WebSocket connection's MQTT byte stream, over `S`.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: S,
    role: Role,
    /// Socket bytes read but not yet taken: a partial header, a control
    /// frame, or payload read along with a header. Freed once empty.
    rbuf: Vec<u8>,
    rpos: usize,
    frame: Frame,
    /// A fragmented message is open (its next frame is a continuation).
    in_message: bool,
    /// Bytes of the open message so far.
    message: u64,
    /// Largest frame or message.
    max_message: u64,
    /// Frames to send, from `wpos` on. Freed once sent.
    wbuf: Vec<u8>,
    wpos: usize,
    /// A close was sent: nothing more is.
    close_sent: bool,
    /// The stream has ended for the reader.
    read_done: bool,
}

impl<S> WsStream<S> {
    /// The stream after a completed upgrade, as `role`; `early` holds
    /// whatever the peer sent after the handshake, already read.
    pub fn new(inner: S, role: Role, early: Vec<u8>, max_message: usize) -> Self {
        Self {
            inner,
            role,
            rbuf: early,
            rpos: 0,
            frame: Frame::default(),
            in_message: false,
            message: 0,
            max_message: max_message as u64,
            wbuf: Vec::new(),
            wpos: 0,
            close_sent: false,
            read_done: false,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
    }

    /// Queues a close frame, once.
    fn queue_close(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            put_frame(&mut self.wbuf, CLOSE, &code.to_be_bytes(), self.role);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends what `wbuf` holds; ready once all of it is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        if self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more socket bytes after what is buffered; `false` at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let len = self.rbuf.len();
        self.rbuf.resize(len + READ_CHUNK, 0);
        let mut rb = ReadBuf::new(&mut self.rbuf[len..]);
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.rbuf.truncate(len + n);
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
        }
        ready!(polled)?;
        Poll::Ready(Ok(n > 0))
    }

    /// Answers a control frame whose payload is all in the buffer.
    fn control(&mut self, h: Header) {
        let len = h.len as usize;
        let mut payload = self.buffered()[h.size..h.size + len].to_vec();
        if let Some(mask) = h.mask {
            unmask(&mut payload, mask, 0);
        }
        self.consume(h.size + len);
        match h.opcode {
            PING if !self.close_sent => put_frame(&mut self.wbuf, PONG, &payload, self.role),
            CLOSE => {
                // Echo the client's code (none if it gave none), then end.
                let code = match *payload.as_slice() {
                    [a, b, ..] => u16::from_be_bytes([a, b]),
                    _ => close::NORMAL,
                };
                self.queue_close(code);
                self.read_done = true;
            }
            _ => {}
        }
    }

    /// Ends the stream for a frame it refuses: the close that says why is
    /// queued and the error returned.
    fn refuse(&mut self, cx: &mut Context<'_>, e: FrameError) -> io::Error {
        self.queue_close(e.code());
        self.read_done = true;
        let _ = self.poll_send(cx);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // A pong or the answer to a close goes out as soon as it can;
            // if the socket will not take it now, the next write sends it.
            if this.wpos < this.wbuf.len()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            if this.frame.left > 0 {
                let want = this.frame.left.min(buf.remaining() as u64) as usize;
                let (mask, offset) = (this.frame.mask, this.frame.done);
                let n = if this.buffered().is_empty() {
                    // Straight from the socket into the reader's buffer.
                    let start = buf.filled().len();
                    let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    buf.advance(n);
                    if let Some(mask) = mask {
                        unmask(&mut buf.filled_mut()[start..], mask, offset);
                    }
                    n
                } else {
                    let n = want.min(this.buffered().len());
                    let start = buf.filled().len();
                    buf.put_slice(&this.buffered()[..n]);
                    if let Some(mask) = mask {
                        unmask(&mut buf.filled_mut()[start..], mask, offset);
                    }
                    this.consume(n);
                    n
                };
                this.frame.left -= n as u64;
                this.frame.done += n as u64;
                return Poll::Ready(Ok(()));
            }
            let header = match parse_header(this.buffered(), this.role) {
                Err(e) => return Poll::Ready(Err(this.refuse(cx, e))),
                Ok(h) => h,
            };
            let Some(h) = header else {
                if !ready!(this.poll_fill(cx))? {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                continue;
            };
            match h.opcode {
                CLOSE | PING | PONG => {
                    if this.buffered().len() < h.size + h.len as usize {
                        if !ready!(this.poll_fill(cx))? {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        continue;
                    }
                    this.control(h);
                    continue;
                }
                TEXT => return Poll::Ready(Err(this.refuse(cx, FrameError::Text))),
                CONTINUATION if !this.in_message => {
                    let e = FrameError::Protocol("a continuation begins no message");
                    return Poll::Ready(Err(this.refuse(cx, e)));
                }
                BINARY if this.in_message => {
                    let e = FrameError::Protocol("a new message before the last one ended");
                    return Poll::Ready(Err(this.refuse(cx, e)));
                }
                _ => {}
            }
            if h.opcode == BINARY {
                this.message = 0;
            }
            this.message = this.message.saturating_add(h.len);
            if this.message > this.max_message {
                return Poll::Ready(Err(this.refuse(cx, FrameError::TooBig)));
            }
            this.in_message = !h.fin;
            this.consume(h.size);
            this.frame = Frame {
                mask: h.mask,
                left: h.len,
                done: 0,
            };
            // An empty frame has nothing to read: on to the next.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let part = &data[..data.len().min(WRITE_CHUNK)];
        put_frame(&mut this.wbuf, BINARY, part, this.role);
        // What the socket does not take now is sent before the next write,
        // or by flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(part.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.queue_close(close::NORMAL);
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// A client frame, masked.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn headers_are_read_whole_or_not_at_all_and_bad_ones_refused() {
        let f = frame(true, BINARY, &[0; 300]);
        for cut in 0..8 {
            assert_eq!(parse_header(&f[..cut], Role::Server), Ok(None), "{cut}");
        }
        let h = parse_header(&f, Role::Server)
            .expect("valid")
            .expect("whole");
        assert_eq!((h.fin, h.opcode, h.len, h.size), (true, BINARY, 300, 8));
        let mut unmasked = frame(true, BINARY, b"x");
        unmasked[1] &= 0x7f;
        assert!(matches!(
            parse_header(&unmasked, Role::Server),
            Err(FrameError::Protocol(_))
        ));
        assert!(parse_header(&frame(false, PING, b""), Role::Server).is_err());
        assert!(parse_header(&frame(true, PING, &[0; 126]), Role::Server).is_err());
        assert!(parse_header(&frame(true, 0x3, b""), Role::Server).is_err());
        let mut reserved = frame(true, BINARY, b"x");
        reserved[0] |= 0x40;
        assert!(parse_header(&reserved, Role::Server).is_err());
    }

    #[test]
    fn unmasking_follows_the_offset_across_reads() {
        let mask = [1, 2, 3, 4];
        let plain: Vec<u8> = (0..37).collect();
        let masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let (mut a, mut b) = (masked[..11].to_vec(), masked[11..].to_vec());
        unmask(&mut a, mask, 0);
        unmask(&mut b, mask, 11);
        assert_eq!([a, b].concat(), plain);
    }

    #[tokio::test]
    async fn fragments_and_pings_give_one_byte_stream_and_pongs_go_back() {
        let (mut client, server) = duplex(64 * 1024);
        let early = frame(false, BINARY, b"ab");
        let mut ws = WsStream::new(server, Role::Server, early, 1024);
        let mut sent = frame(true, PING, b"hi");
        sent.extend(frame(true, CONTINUATION, b"cd"));
        sent.extend(frame(true, BINARY, b""));
        sent.extend(frame(true, PONG, b"ignored"));
        sent.extend(frame(true, BINARY, b"ef"));
        client.write_all(&sent).await.expect("write");
        let mut got = [0; 6];
        ws.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"abcdef");
        ws.write_all(b"xyz").await.expect("write");
        ws.flush().await.expect("flush");
        let mut back = [0; 9];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"\x8a\x02hi\x82\x03xyz", "the pong, then the data");
        // A close is answered with the client's code and ends the stream.
        client
            .write_all(&frame(true, CLOSE, &1001u16.to_be_bytes()))
            .await
            .expect("write");
        assert_eq!(ws.read(&mut got).await.expect("end"), 0);
        let mut closed = [0; 4];
        client.read_exact(&mut closed).await.expect("read");
        assert_eq!(closed, [0x88, 2, 0x03, 0xe9]);
    }

    #[tokio::test]
    async fn text_and_oversized_messages_are_refused_with_their_close_codes() {
        for (sent, code) in [
            (frame(true, TEXT, b"{}"), close::UNSUPPORTED),
            (frame(true, BINARY, &[0; 2000]), close::TOO_BIG),
            (
                [
                    frame(false, BINARY, &[0; 600]),
                    frame(true, CONTINUATION, &[0; 600]),
                ]
                .concat(),
                close::TOO_BIG,
            ),
            (frame(true, CONTINUATION, b"x"), close::PROTOCOL),
        ] {
            let (mut client, server) = duplex(64 * 1024);
            let mut ws = WsStream::new(server, Role::Server, Vec::new(), 1024);
            client.write_all(&sent).await.expect("write");
            let mut sink = vec![0; 4096];
            let mut result = Ok(0);
            for _ in 0..4 {
                result = ws.read(&mut sink).await;
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(
                result.map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidData),
                "{code}"
            );
            let mut closed = [0; 4];
            client.read_exact(&mut closed).await.expect("read");
            assert_eq!(closed[..2], [0x88, 2]);
            assert_eq!(u16::from_be_bytes([closed[2], closed[3]]), code);
        }
    }

    #[tokio::test]
    async fn a_client_stream_and_a_server_stream_talk() {
        let (a, b) = duplex(64 * 1024);
        let mut client = WsStream::new(a, Role::Client([9, 8, 7, 6]), Vec::new(), 1 << 20);
        let mut server = WsStream::new(b, Role::Server, Vec::new(), 1 << 20);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let send = async {
            client.write_all(&big).await.expect("write");
            client.flush().await.expect("flush");
            let mut back = [0; 5];
            client.read_exact(&mut back).await.expect("read");
            back
        };
        let echo = async {
            let mut got = vec![0; big.len()];
            server.read_exact(&mut got).await.expect("read");
            server.write_all(b"thank").await.expect("write");
            server.flush().await.expect("flush");
            got
        };
        let (back, got) = tokio::join!(send, echo);
        assert_eq!(got, big);
        assert_eq!(&back, b"thank");
    }
}
