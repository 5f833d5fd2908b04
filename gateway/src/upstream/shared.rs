//! A shared handle to one tower balancer, without tower's `Buffer`.
//!
//! `Balance` is not `Clone`, and tower's answer, `Buffer`, runs it in a worker task that every
//! request reaches through a channel and answers through another: two cross-task wake-ups per
//! request, which on a small machine cost more than everything else the gateway does. Here each
//! request locks the balancer only to pick an endpoint and start the call (`poll_ready` then
//! `call`, microseconds), then awaits the response outside the lock. The call is a plain async
//! method, not a `Service`: the pool awaits it inside its own future, so nothing is boxed.

use std::sync::Mutex;
use std::task::Poll;

use tower::{BoxError, Service};

/// The shared handle: the pool's clones share it through the pool's `Arc`.
pub(super) struct Shared<S> {
    inner: Mutex<S>,
}

impl<S> Shared<S> {
    pub(super) fn new(service: S) -> Self {
        Self {
            inner: Mutex::new(service),
        }
    }

    /// Sends `req` through the balancer: readiness and the call under the lock, in one step,
    /// the response awaited outside it.
    pub(super) async fn call<Req>(&self, req: Req) -> Result<S::Response, BoxError>
    where
        S: Service<Req, Error = BoxError>,
    {
        let mut req = Some(req);
        let response = std::future::poll_fn(|cx| {
            let mut balance = self.inner.lock().expect("balancer lock");
            match balance.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(balance.call(req.take().expect("called once")))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // No endpoint is ready: this task's waker is registered with the balancer
                // (discovery or an endpoint), and the per-try timeout bounds the wait.
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        response.await
    }
}
