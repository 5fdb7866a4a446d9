//! What reaches a listener before MQTT: a WebSocket's frames as a client
//! sends them, a PROXY protocol header, the first HTTP request's head. The
//! first byte picks which; none may panic or loop, whatever follows.
#![no_main]

use edgegate::http::upgrade;
use edgegate::transport::proxy;
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
    match which % 3 {
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
        _ => {
            let mut s = input;
            let _ = run(upgrade::open(&mut s));
        }
    }
});
