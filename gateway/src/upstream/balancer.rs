//! A shared handle to one tower balancer, without tower's `Buffer`.
//!
//! `Balance` is not `Clone`, and tower's answer, `Buffer`, runs it in a worker task that every
//! request reaches through a channel and answers through another: two cross-task wake-ups per
//! request, which on a small machine cost more than everything else the gateway does. Here each
//! request locks the balancer only to pick an endpoint and start the call (`poll_ready` then
//! `call`, microseconds), then awaits the response outside the lock. Readiness is decided inside
//! the call's future, so clones never race between one's `poll_ready` and another's `call`.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{BoxError, Service};

/// The shared handle; clones share the balancer.
pub(crate) struct Locked<S>(Arc<Mutex<S>>);

impl<S> Clone for Locked<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Locked<S> {
    pub(crate) fn new(service: S) -> Self {
        Self(Arc::new(Mutex::new(service)))
    }
}

impl<S, Req> Service<Req> for Locked<S>
where
    S: Service<Req, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let balancer = self.0.clone();
        let mut req = Some(req);
        Box::pin(async move {
            let called = std::future::poll_fn(|cx| {
                let mut balance = balancer.lock().expect("balancer lock");
                match balance.poll_ready(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(balance.call(req.take().expect("called once")))),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    // No endpoint is ready: this task's waker is registered with the balancer
                    // (discovery or an endpoint), and the per-try timeout bounds the wait.
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?;
            called.await
        })
    }
}
