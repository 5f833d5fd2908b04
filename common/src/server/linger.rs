//! Lingering close: a connection hyper closes is half-closed, and what the peer still sends is
//! read and dropped for a while before the socket goes.
//!
//! A server that answers before reading a request body (413, 401, a refused upload) and then
//! closes with those bytes unread makes the kernel send a reset, and a reset makes the peer's
//! kernel discard the answer it had not read yet: the client sees "connection reset" instead of
//! the 413. nginx and Apache linger for the same reason (`lingering_close`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a closed connection keeps reading what its peer still sends.
const LINGER: Duration = Duration::from_secs(2);

/// An I/O stream whose shutdown sends FIN, then reads until the peer's EOF, an error or
/// [`LINGER`], discarding what arrives.
pub struct Lingering<IO> {
    io: IO,
    closing: Option<Pin<Box<Sleep>>>,
}

impl<IO> Lingering<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Self { io, closing: None }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Lingering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.closing = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                // Reset or gone: nothing left to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let closing = this.closing.as_mut().expect("set above");
                    return closing.as_mut().poll(cx).map(Ok);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A server that answers without reading a large upload and closes: the client must read
    /// the answer whole, every time.
    #[tokio::test]
    async fn an_answer_sent_before_an_unread_upload_reaches_the_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..20 {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = Lingering::new(stream);
                let mut head = [0u8; 16];
                stream.read_exact(&mut head).await.unwrap();
                stream.write_all(b"refused").await.unwrap();
                stream.shutdown().await.unwrap();
            }
        });
        for round in 0..20 {
            // The whole upload is sent before the answer is read, as a proxy streaming a body
            // on does: without lingering, the reset discards the answer waiting to be read.
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(&vec![b'x'; 20_000_000])
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(answer, b"refused", "round {round}");
        }
        server.await.unwrap();
    }
}
