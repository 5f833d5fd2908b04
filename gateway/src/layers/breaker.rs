//! A circuit breaker per upstream pool.
//!
//! Closed: calls pass, and the last `MALL_GW_BREAKER_WINDOW` outcomes are kept. Once at least
//! `MALL_GW_BREAKER_MIN_CALLS` are known and the failed share reaches
//! `MALL_GW_BREAKER_ERROR_RATIO` (errors, timeouts, 5xx) or the slow share reaches
//! `MALL_GW_BREAKER_SLOW_RATIO`, it opens. Open: calls fail at once with [`BreakerOpen`] (503
//! `upstream_unavailable`) for `MALL_GW_BREAKER_OPEN`. Half-open: up to
//! `MALL_GW_BREAKER_PROBES` calls go through as probes; as many successes close it, one failure
//! opens it again. Calls a client broke (an aborted, oversized or trickling body) are no verdict
//! on the pool.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, which a test can pause and advance.
use tokio::time::Instant;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::{BoxError, Layer, Service};

use crate::client_body::{BodyProgress, client_fault};
use crate::config::BreakerSettings;
use crate::routes::PoolName;

/// The circuit is open: the pool is failing, calls are refused without trying.
#[derive(Debug, thiserror::Error)]
#[error("circuit open for {pool}; retry in {retry_after:?}")]
pub struct BreakerOpen {
    /// The pool.
    pub pool: &'static str,
    /// Until the next probe.
    pub retry_after: Duration,
}

/// The externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Probing.
    HalfOpen,
    /// Calls are refused.
    Open,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
enum State {
    Closed {
        window: VecDeque<Outcome>,
        failed: u32,
        slow: u32,
    },
    Open {
        since: Instant,
    },
    HalfOpen {
        in_flight: u32,
        passed: u32,
    },
}

/// The breaker of one pool.
#[derive(Debug)]
pub struct Breaker {
    pool: PoolName,
    cfg: BreakerSettings,
    state: Mutex<State>,
}

/// What [`Breaker::admit`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Normal,
    Probe,
}

fn closed() -> State {
    State::Closed {
        window: VecDeque::new(),
        failed: 0,
        slow: 0,
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(pool: PoolName, cfg: BreakerSettings) -> Self {
        Self::publish(pool, BreakerState::Closed);
        Self {
            pool,
            cfg,
            state: Mutex::new(closed()),
        }
    }

    fn publish(pool: PoolName, state: BreakerState) {
        let v = match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        };
        metrics::gauge!("gateway_circuit_state", "pool" => pool.as_str()).set(v);
    }

    fn transition(&self, state: &mut State, to: State) {
        let visible = match to {
            State::Closed { .. } => BreakerState::Closed,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        };
        tracing::warn!(pool = self.pool.as_str(), state = ?visible, "circuit breaker");
        Self::publish(self.pool, visible);
        *state = to;
    }

    /// The current state (an expired open state reads as half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.state.lock().expect("breaker lock") {
            State::Closed { .. } => BreakerState::Closed,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
            State::Open { since } if since.elapsed() >= self.cfg.open_for => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        }
    }

    fn admit(&self) -> Result<Ticket, BreakerOpen> {
        let mut state = self.state.lock().expect("breaker lock");
        match &mut *state {
            State::Closed { .. } => Ok(Ticket::Normal),
            State::Open { since } => {
                let elapsed = since.elapsed();
                if elapsed < self.cfg.open_for {
                    return Err(BreakerOpen {
                        pool: self.pool.as_str(),
                        retry_after: self.cfg.open_for - elapsed,
                    });
                }
                self.transition(
                    &mut state,
                    State::HalfOpen {
                        in_flight: 1,
                        passed: 0,
                    },
                );
                Ok(Ticket::Probe)
            }
            State::HalfOpen { in_flight, passed } => {
                if *in_flight + *passed < self.cfg.probes {
                    *in_flight += 1;
                    Ok(Ticket::Probe)
                } else {
                    Err(BreakerOpen {
                        pool: self.pool.as_str(),
                        retry_after: Duration::from_secs(1),
                    })
                }
            }
        }
    }

    fn record(&self, ticket: Ticket, outcome: Outcome) {
        let mut state = self.state.lock().expect("breaker lock");
        let cfg = &self.cfg;
        match (&mut *state, ticket) {
            (State::Closed { window, failed, slow }, Ticket::Normal) => {
                window.push_back(outcome);
                *failed += u32::from(outcome.failed);
                *slow += u32::from(outcome.slow);
                if window.len() > cfg.window as usize
                    && let Some(old) = window.pop_front()
                {
                    *failed -= u32::from(old.failed);
                    *slow -= u32::from(old.slow);
                }
                let n = window.len() as f64;
                if window.len() >= cfg.min_calls as usize
                    && (f64::from(*failed) / n >= cfg.error_ratio || f64::from(*slow) / n >= cfg.slow_ratio)
                {
                    self.transition(
                        &mut state,
                        State::Open {
                            since: Instant::now(),
                        },
                    );
                }
            }
            (State::HalfOpen { in_flight, passed }, Ticket::Probe) => {
                *in_flight = in_flight.saturating_sub(1);
                if outcome.failed || outcome.slow {
                    self.transition(
                        &mut state,
                        State::Open {
                            since: Instant::now(),
                        },
                    );
                } else {
                    *passed += 1;
                    if *passed >= cfg.probes {
                        self.transition(&mut state, closed());
                    }
                }
            }
            // An outcome from before the last transition says nothing about the current state.
            _ => {}
        }
    }
}

/// A call the breaker let through, whose outcome [`Admitted::finish`] records. Dropped
/// unfinished (the client went away mid-call, and the request's future with it), a probe gives
/// its place back without a verdict; otherwise a half-open breaker would count it in flight for
/// good and, once as many were lost as it allows probes, refuse every call from then on.
struct Admitted {
    breaker: Arc<Breaker>,
    ticket: Ticket,
    finished: bool,
}

impl Breaker {
    /// Lets a call through, or refuses it while the circuit is open.
    fn enter(self: &Arc<Self>) -> Result<Admitted, BreakerOpen> {
        let ticket = self.admit()?;
        Ok(Admitted {
            breaker: self.clone(),
            ticket,
            finished: false,
        })
    }

    /// A probe that ended without an outcome.
    fn abandon(&self) {
        if let State::HalfOpen { in_flight, .. } = &mut *self.state.lock().expect("breaker lock") {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl Admitted {
    /// Records the call's outcome: `failed` if the instance failed it, slow if it took at
    /// least `MALL_GW_BREAKER_SLOW_CALL`. A call the client broke has no verdict.
    fn finish(mut self, failed: Option<bool>, took: Duration) {
        self.finished = true;
        match failed {
            Some(failed) => {
                let slow = took >= self.breaker.cfg.slow_call;
                self.breaker.record(self.ticket, Outcome { failed, slow });
            }
            None if self.ticket == Ticket::Probe => self.breaker.abandon(),
            None => {}
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.finished && self.ticket == Ticket::Probe {
            self.breaker.abandon();
        }
    }
}

/// Puts a pool's [`Breaker`] in front of a service.
#[derive(Clone)]
pub struct BreakerLayer(Arc<Breaker>);

impl BreakerLayer {
    /// The layer of `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self(breaker)
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: self.0.clone(),
        }
    }
}

/// The breaker around a service: refuses calls while open, and records each call's outcome
/// (an error or a 5xx answer is a failure, unless the client caused it: see `client_body`).
#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S, B, RB> Service<Request<B>> for CircuitBreaker<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let admitted = match self.breaker.enter() {
            Ok(admitted) => admitted,
            Err(open) => return Box::pin(std::future::ready(Err(open.into()))),
        };
        let progress = req.extensions().get::<BodyProgress>().cloned();
        let started = Instant::now();
        // `map`, not an async block awaiting `called`: that would hold the inner future twice
        // in a box made for every request.
        Box::pin(self.inner.call(req).map(move |result| {
            let failed = match &result {
                // A shared dependency's outage is no verdict on this pool's instances.
                Ok(res) if mall_common::error::is_dependency_outage(res) => None,
                Ok(res) => Some(res.status().is_server_error()),
                Err(e) => client_fault(e, progress.as_ref()).is_none().then_some(true),
            };
            admitted.finish(failed, started.elapsed());
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_body::ClientFault;

    fn cfg() -> BreakerSettings {
        BreakerSettings {
            window: 10,
            min_calls: 4,
            error_ratio: 0.5,
            slow_ratio: 0.9,
            slow_call: Duration::from_secs(1),
            open_for: Duration::from_millis(50),
            probes: 2,
        }
    }

    const OK: Outcome = Outcome {
        failed: false,
        slow: false,
    };
    const FAIL: Outcome = Outcome {
        failed: true,
        slow: false,
    };

    #[tokio::test(start_paused = true)]
    async fn opens_on_errors_then_probes_and_closes() {
        let b = Breaker::new(PoolName::Product, cfg());
        for o in [OK, FAIL, OK] {
            b.record(b.admit().unwrap(), o);
        }
        assert_eq!(b.state(), BreakerState::Closed, "too few calls for a verdict");
        b.record(b.admit().unwrap(), FAIL);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err(), "open fails fast");

        tokio::time::advance(Duration::from_millis(60)).await;
        let p1 = b.admit().unwrap();
        let p2 = b.admit().unwrap();
        assert_eq!((p1, p2), (Ticket::Probe, Ticket::Probe));
        assert!(b.admit().is_err(), "no more than the probe count at once");
        b.record(p1, OK);
        b.record(p2, OK);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = Breaker::new(PoolName::Order, cfg());
        for _ in 0..4 {
            b.record(b.admit().unwrap(), FAIL);
        }
        tokio::time::advance(Duration::from_millis(60)).await;
        let probe = b.admit().unwrap();
        b.record(probe, FAIL);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unfinished_gives_its_place_back() {
        let b = Breaker::new(PoolName::Flashsale, cfg());
        for _ in 0..4 {
            b.record(b.admit().unwrap(), FAIL);
        }
        tokio::time::advance(Duration::from_millis(60)).await;
        let b = Arc::new(b);
        let lost = [b.enter().unwrap(), b.enter().unwrap()];
        assert!(b.enter().is_err(), "both probe places taken");
        drop(lost);
        let again = [b.enter().unwrap(), b.enter().unwrap()];
        for probe in again {
            probe.finish(Some(false), Duration::ZERO);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the probes after the lost ones close it"
        );
    }

    #[test]
    fn slow_calls_open_it_too() {
        let b = Breaker::new(PoolName::Inventory, cfg());
        for _ in 0..4 {
            b.record(
                b.admit().unwrap(),
                Outcome {
                    failed: false,
                    slow: true,
                },
            );
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn the_layer_opens_on_failed_answers_and_then_refuses_without_calling_through() {
        let breaker = Arc::new(Breaker::new(PoolName::Product, cfg()));
        let (mut service, mut handle) =
            tower_test::mock::spawn_layer::<Request<()>, Response<()>, _>(BreakerLayer::new(breaker.clone()));
        for _ in 0..4 {
            assert!(service.poll_ready().is_ready());
            let answer = service.call(Request::new(()));
            let (_, reply) = handle.next_request().await.expect("reached the service");
            reply.send_response(Response::builder().status(503).body(()).unwrap());
            assert_eq!(answer.await.unwrap().status(), 503);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        let refused = service.call(Request::new(())).await.expect_err("open");
        assert!(refused.downcast_ref::<BreakerOpen>().is_some(), "{refused}");
        drop(service);
        assert!(
            handle.next_request().await.is_none(),
            "nothing reached the service"
        );
    }

    #[tokio::test]
    async fn a_dependency_outage_every_instance_shares_never_opens_it() {
        let breaker = Arc::new(Breaker::new(PoolName::Flashsale, cfg()));
        let (mut service, mut handle) =
            tower_test::mock::spawn_layer::<Request<()>, Response<()>, _>(BreakerLayer::new(breaker.clone()));
        for _ in 0..10 {
            assert!(service.poll_ready().is_ready());
            let answer = service.call(Request::new(()));
            let (_, reply) = handle.next_request().await.expect("reached the service");
            let outage = Response::builder()
                .status(503)
                .header(mall_common::error::DEPENDENCY_UNAVAILABLE, "1")
                .body(())
                .unwrap();
            reply.send_response(outage);
            assert_eq!(answer.await.unwrap().status(), 503);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn calls_the_client_broke_are_no_verdict_on_the_pool() {
        let breaker = Arc::new(Breaker::new(PoolName::Order, cfg()));
        let (mut service, mut handle) =
            tower_test::mock::spawn_layer::<Request<()>, Response<()>, _>(BreakerLayer::new(breaker.clone()));
        for _ in 0..10 {
            assert!(service.poll_ready().is_ready());
            let answer = service.call(Request::new(()));
            let (_, reply) = handle.next_request().await.expect("reached the service");
            reply.send_error(ClientFault::TooLarge);
            assert!(answer.await.is_err());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
