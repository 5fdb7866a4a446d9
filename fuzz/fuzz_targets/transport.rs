//! What reaches a listener before MQTT: a WebSocket's frames as a client
//! sends them, a PROXY protocol header, the first HTTP request's head; and
//! TLS 1.3 records after the handshake, sealed by a peer, cut anywhere and
//! tampered with. The first byte picks which; none may panic or loop,
//! whatever follows, and records open to what was sealed until the first
//! tampered one.
#![no_main]

use edgegate::http::upgrade;
use edgegate::transport::proxy;
use edgegate::transport::record::{Content, Records, Secret, Suite};
use edgegate::transport::ws::{Role, WsStream};
use libfuzzer_sys::fuzz_target;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A peer that sends `input` and takes whatever is written; it never waits.
struct Peer<'a> {
    input: &'a [u8],
    written: usize,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written += data.len();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits on anything but `Peer`.
fn run<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let mut ws = WsStream::new(Peer { input, written: 0 }, Role::Server, Vec::new(), 4096);
            let mut buf = [0; 512];
            // Every read takes input or ends the stream: this is bounded.
            for _ in 0..=input.len() {
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(&mut ws).poll_read(&mut Context::from_waker(Waker::noop()), &mut rb)
                {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                    _ => break,
                }
            }
        }
        1 => {
            let mut s = input;
            let _ = run(proxy::read(&mut s));
        }
        2 => {
            let mut s = input;
            let _ = run(upgrade::open(&mut s));
        }
        _ => records(input),
    }
});

/// Input in steps of three bytes: what the peer seals (that many bytes of
/// data, or close_notify), then a byte to flip (if any) and where the
/// reader's input is cut. The gateway's side opens what arrives and seals
/// an answer after each record.
fn records(input: &[u8]) {
    let suites = [
        Suite::Aes128GcmSha256,
        Suite::Aes256GcmSha384,
        Suite::Chacha20Poly1305Sha256,
    ];
    let Some((&pick, steps)) = input.split_first() else {
        return;
    };
    let suite = suites[usize::from(pick) % suites.len()];
    let secret = |seed| Secret::new(&[seed; 32]).expect("a secret");
    let side = |rx, tx| Records::new(suite, (0, secret(rx)), (0, secret(tx)));
    let (Ok(mut server), Ok(mut peer)) = (side(1, 2), side(2, 1)) else {
        return;
    };
    let (mut wire, mut sealed, mut opened, mut reply) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tampered = false;
    for step in steps.chunks_exact(3) {
        let start = wire.len();
        match step[0] {
            0 => {
                let _ = peer.seal_close_notify(&mut wire);
            }
            n => {
                let data = vec![n; usize::from(n) * 97];
                if peer.seal(&data, &mut wire).is_ok() && !tampered {
                    sealed.extend_from_slice(&data);
                }
            }
        }
        if step[1] != 0 && wire.len() > start {
            let at = start + usize::from(step[1]) % (wire.len() - start);
            wire[at] ^= step[1];
            tampered = true;
        }
        let cut = usize::from(step[2]) * wire.len() / 255;
        let mut at = 0;
        while let Ok(Some((taken, content))) = server.open(&mut wire[at..cut], &mut reply) {
            at += taken;
            if let Content::Data(plain) = content {
                opened.extend_from_slice(plain);
            }
            let _ = server.seal(b"ack", &mut reply);
        }
        wire.drain(..at);
    }
    assert!(
        sealed.starts_with(&opened),
        "a record opened to something that was not sealed"
    );
}
