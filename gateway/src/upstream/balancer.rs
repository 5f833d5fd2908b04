//! A shared handle to one tower balancer, without tower's `Buffer`.
//!
//! `Balance` is not `Clone`, and tower's answer, `Buffer`, runs it in a worker task that every
//! request reaches through a channel and answers through another: two cross-task wake-ups per
//! request, which on a small machine cost more than everything else the gateway does. Here each
//! request locks the balancer only to pick an endpoint and start the call (`poll_ready` then
//! `call`, microseconds), then awaits the response outside the lock. Readiness is decided under
//! the same lock as the call (in `call`, or in its future while no endpoint is ready), so clones
//! never race between one's `poll_ready` and another's `call`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

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
    S: Service<Req, Error = BoxError>,
    S::Future: Unpin,
    Req: Unpin,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Call<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Most requests find an endpoint ready at once and are handed over here, never kept in
        // this future. A ready balancer needs no waker; a pending one is polled again by the
        // future, with its task's.
        let mut balance = self.0.lock().expect("balancer lock");
        match balance.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Call::Called(balance.call(req)),
            Poll::Ready(Err(e)) => Call::Failed(Some(e)),
            Poll::Pending => Call::Waiting {
                balancer: self.0.clone(),
                req: Some(req),
            },
        }
    }
}

/// A request through the shared handle: waiting for the balancer to pick an endpoint, then the
/// endpoint's call. A type of its own rather than a boxed async block: one allocation fewer per
/// request, and the state lives in the pool's future that holds it.
pub(crate) enum Call<S: Service<Req>, Req> {
    /// Not yet handed to an endpoint.
    Waiting {
        balancer: Arc<Mutex<S>>,
        req: Option<Req>,
    },
    /// The chosen endpoint's answer to come.
    Called(S::Future),
    /// The balancer failed (its discovery stream ended).
    Failed(Option<BoxError>),
}

impl<S, Req> Future for Call<S, Req>
where
    S: Service<Req, Error = BoxError>,
    S::Future: Unpin,
    Req: Unpin,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Call::Waiting { balancer, req } = this {
            let called = {
                let mut balance = balancer.lock().expect("balancer lock");
                match balance.poll_ready(cx) {
                    Poll::Ready(Ok(())) => balance.call(req.take().expect("called once")),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    // No endpoint is ready: this task's waker is registered with the balancer
                    // (discovery or an endpoint), and the per-try timeout bounds the wait.
                    Poll::Pending => return Poll::Pending,
                }
            };
            *this = Call::Called(called);
        }
        match this {
            Call::Called(called) => Pin::new(called).poll(cx),
            Call::Failed(e) => Poll::Ready(Err(e.take().expect("polled after it failed"))),
            Call::Waiting { .. } => unreachable!("handed to an endpoint above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    #[tokio::test]
    async fn a_request_is_handed_over_at_once_when_ready_and_waits_for_readiness_otherwise() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut locked = Locked::new(service);

        handle.allow(1);
        let call = locked.call("now");
        assert!(
            matches!(call, Call::Called(_)),
            "a ready balancer takes the request in `call`"
        );
        let answer = tokio::spawn(call);
        let (req, reply) = handle.next_request().await.expect("the request");
        assert_eq!(req, "now");
        reply.send_response("answered");
        assert_eq!(answer.await.unwrap().unwrap(), "answered");

        // Nothing ready: the future keeps the request and sends it once readiness comes.
        handle.allow(0);
        let call = locked.call("later");
        assert!(matches!(call, Call::Waiting { .. }));
        let answer = tokio::spawn(call);
        tokio::task::yield_now().await;
        handle.allow(1);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request());
        let (req, reply) = woken
            .await
            .expect("the waiting task is woken when an endpoint is ready")
            .expect("the request, once ready");
        assert_eq!(req, "later");
        reply.send_response("answered later");
        assert_eq!(answer.await.unwrap().unwrap(), "answered later");
    }
}
