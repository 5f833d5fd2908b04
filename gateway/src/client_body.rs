//! The client's request body on its way upstream, watched so that its failures are blamed on
//! the client rather than on the instance.
//!
//! A client that aborts its upload, trickles it, or sends more than `MALL_BODY_LIMIT` breaks the
//! upstream call as surely as a dead instance does. Counted against the instance, 25 such
//! uploads opened a pool's breaker for every shopper; so the body is wrapped, its errors become
//! [`ClientFault`], and a timeout while it is still arriving is the client's too.
//!
//! A body of up to [`WHOLE`] bytes is read before anything goes upstream ([`read`]): a broken,
//! oversized or trickling one is answered without bothering an instance, and a whole one can be
//! sent again by a retry ([`Replay`]). A larger one streams, what was read first included.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt as _, LengthLimitError};
use tower::BoxError;

use crate::error::{GatewayError, find_cause};

/// What the client did wrong with its body.
#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    /// More bytes than `MALL_BODY_LIMIT` (413).
    #[error("the request body is larger than the gateway accepts (MALL_BODY_LIMIT)")]
    TooLarge,
    /// The body broke off or was malformed (400).
    #[error("the request body could not be read: {0}")]
    Broken(BoxError),
    /// The body was still arriving when the time ran out (408).
    #[error("the request body did not arrive in time")]
    Trickled,
}

impl ClientFault {
    /// The client's fault, answered as such: 413, 400 or 408, never counted against the pool.
    pub fn answer(&self) -> GatewayError {
        match self {
            Self::TooLarge => GatewayError::PayloadTooLarge(self.to_string()),
            Self::Broken(_) => GatewayError::BrokenBody(self.to_string()),
            Self::Trickled => GatewayError::RequestTimeout(self.to_string()),
        }
    }
}

/// Whether a request's body has been read to its end; shared by the body and the layers that
/// judge a failure (carried in the request's extensions).
#[derive(Debug, Clone, Default)]
pub struct BodyProgress(Arc<AtomicBool>);

impl BodyProgress {
    fn finish(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the body was read to its end (or there was none).
    pub fn finished(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client's fault in `error`, if it is one: its body's own failure, or a timeout while its
/// body was still arriving (`progress`, when the request had a body).
pub fn client_fault(error: &BoxError, progress: Option<&BodyProgress>) -> Option<ClientFault> {
    let e: &(dyn std::error::Error + 'static) = error.as_ref();
    if let Some(fault) = find_cause::<ClientFault>(e) {
        return Some(match fault {
            ClientFault::TooLarge => ClientFault::TooLarge,
            ClientFault::Trickled => ClientFault::Trickled,
            ClientFault::Broken(e) => ClientFault::Broken(e.to_string().into()),
        });
    }
    let trickling = progress.is_some_and(|p| !p.finished());
    if trickling && find_cause::<tower::timeout::error::Elapsed>(e).is_some() {
        return Some(ClientFault::Trickled);
    }
    None
}

/// The largest body read whole before the request goes upstream.
pub const WHOLE: usize = 64 * 1024;

/// A request body read whole, in the request's extensions so a retry can send it again.
#[derive(Debug, Clone)]
pub struct Replay(pub Bytes);

/// A request body as [`read`] left it.
pub enum Read {
    /// Read to its end (empty when there was none).
    Whole(Bytes),
    /// Larger than [`WHOLE`]: what was read first, then the rest as it comes, watched.
    Streaming(Body, BodyProgress),
}

fn fault_of(error: axum::Error) -> ClientFault {
    if find_cause::<LengthLimitError>(&error).is_some() {
        ClientFault::TooLarge
    } else {
        ClientFault::Broken(error.into())
    }
}

/// Reads `body` whole if it is at most [`WHOLE`] bytes, within `within` (else the client
/// trickled); a larger one is returned streaming. Its failures are the client's.
pub async fn read(mut body: Body, within: Duration) -> Result<Read, ClientFault> {
    if body.is_end_stream() {
        return Ok(Read::Whole(Bytes::new()));
    }
    if body.size_hint().lower() > WHOLE as u64 {
        let (body, progress) = watch(body, VecDeque::new());
        return Ok(Read::Streaming(body, progress));
    }
    let mut read = VecDeque::new();
    let mut len = 0;
    let reading = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(fault_of)?.into_data() {
                len += data.len();
                read.push_back(data);
                if len > WHOLE {
                    return Ok(false);
                }
            }
        }
        Ok::<bool, ClientFault>(true)
    };
    let whole = tokio::time::timeout(within, reading)
        .await
        .map_err(|_| ClientFault::Trickled)??;
    if !whole {
        let (body, progress) = watch(body, read);
        return Ok(Read::Streaming(body, progress));
    }
    Ok(Read::Whole(match read.len() {
        0 => Bytes::new(),
        1 => read.pop_front().expect("one"),
        _ => read
            .iter()
            .fold(BytesMut::with_capacity(len), |mut all, part| {
                all.extend_from_slice(part);
                all
            })
            .freeze(),
    }))
}

/// Wraps `body`, sending `first` before it: its errors become [`ClientFault`]s, and its end is
/// noted in the returned progress.
fn watch(body: Body, first: VecDeque<Bytes>) -> (Body, BodyProgress) {
    let progress = BodyProgress::default();
    let watched = Watched {
        first,
        inner: body,
        progress: progress.clone(),
    };
    (Body::new(watched), progress)
}

struct Watched {
    first: VecDeque<Bytes>,
    inner: Body,
    progress: BodyProgress,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = ClientFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
        if let Some(data) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.progress.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(fault_of(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.progress.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first: usize = self.first.iter().map(Bytes::len).sum();
        let rest = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + first as u64);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first as u64);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Limited;

    #[tokio::test]
    async fn small_bodies_are_read_whole_and_large_ones_stream_from_their_start() {
        let Read::Whole(none) = read(Body::empty(), Duration::from_secs(1)).await.unwrap() else {
            panic!("empty is whole");
        };
        assert!(none.is_empty());
        let Read::Whole(small) = read(Body::from("small"), Duration::from_secs(1)).await.unwrap() else {
            panic!("small is whole");
        };
        assert_eq!(&small[..], b"small");

        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..3)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; WHOLE / 2]))))
            .collect();
        let large = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )));
        let Read::Streaming(body, progress) = read(large, Duration::from_secs(1)).await.unwrap() else {
            panic!("large streams");
        };
        assert!(!progress.finished());
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 3 * (WHOLE / 2));
        assert_eq!(
            (all[0], all[WHOLE / 2], all[WHOLE]),
            (0, 1, 2),
            "in order, from the start"
        );
        assert!(progress.finished());
    }

    #[tokio::test]
    async fn over_the_limit_broken_and_trickling_bodies_are_the_clients_fault() {
        let over = Body::new(Limited::new(Body::from("x".repeat(10)), 4));
        assert!(matches!(
            read(over, Duration::from_secs(1)).await,
            Err(ClientFault::TooLarge)
        ));

        let broken: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("connection reset")),
        ];
        let broken = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            broken,
        )));
        assert!(matches!(
            read(broken, Duration::from_secs(1)).await,
            Err(ClientFault::Broken(_))
        ));

        let never = Body::new(http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >()));
        assert!(matches!(
            read(never, Duration::from_millis(20)).await,
            Err(ClientFault::Trickled)
        ));

        let late: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(
            client_fault(&late, Some(&BodyProgress::default())).is_some(),
            "still arriving"
        );
        let done = BodyProgress::default();
        done.finish();
        assert!(
            client_fault(&late, Some(&done)).is_none(),
            "a finished body is not late"
        );
        assert!(
            client_fault(&late, None).is_none(),
            "no streamed body, no trickle"
        );
    }
}
