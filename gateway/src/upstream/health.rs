//! Which instances of a pool are in rotation, and the discovery stream that tells the balancer.
//!
//! One task per pool owns the rotation state: every `MALL_GW_HEALTH_INTERVAL` it asks each
//! instance's `/healthz`; `MALL_GW_UNHEALTHY_AFTER` consecutive failures take an instance out,
//! `MALL_GW_HEALTHY_AFTER` consecutive passes bring it back. Requests that fail
//! `MALL_GW_EJECT_AFTER` times in a row eject an instance at once (passive ejection), without
//! waiting for the next check; it then needs the passing checks to return. Passive ejection
//! never takes out the last instance in rotation: that one is the checks' call.
//!
//! A check that gets no answer within `MALL_GW_HEALTH_TIMEOUT` while the instance answered
//! requests during that very check is no verdict either way: the instance is busy, not down.
//! Under a load that saturates the machine the check waits behind the traffic like any request,
//! and counting its lateness as a failure took a serving instance (the only one, in the
//! benchmark) out of rotation for a couple of seconds of 503s. An instance that answers the
//! check with an error, refuses the connection, or answers nothing at all still fails it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use futures_util::Stream;
use futures_util::future::join_all;
use http::Request;
use http::uri::{Authority, PathAndQuery};
use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;
use tower::discover::Change;
use url::Url;

use super::HttpClient;
use super::endpoint::{Endpoint, PassiveHealth, Ranked};
use crate::config::HealthSettings;
use crate::routes::PoolName;

struct Slot {
    endpoint: Endpoint,
    passive: Arc<PassiveHealth>,
    in_rotation: bool,
    failed: u32,
    passed: u32,
}

/// The rotation state of one pool.
pub struct Registry {
    pool: PoolName,
    slots: Mutex<Vec<Slot>>,
    in_rotation: AtomicUsize,
    changes: UnboundedSender<Change<usize, Ranked>>,
    ejections: Mutex<Option<UnboundedReceiver<(usize, String)>>>,
    client: HttpClient,
}

/// The balancer's view: inserts and removals as they happen.
pub(super) type DiscoverStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Change<usize, Ranked>, Infallible>> + Send>>;

/// The latency assumed for an instance before it answered: low enough that a new or returning
/// instance gets tried, not so low that a burst lands on it alone.
const DEFAULT_RTT: std::time::Duration = std::time::Duration::from_millis(1);

impl Registry {
    /// Every instance starts in rotation, so the first requests need not wait for a check.
    pub(super) fn new(
        pool: PoolName,
        instances: &[Url],
        client: HttpClient,
        health: &HealthSettings,
    ) -> (Arc<Self>, DiscoverStream) {
        let (changes, mut rx) = unbounded_channel();
        let (eject_tx, eject_rx) = unbounded_channel();
        let slots: Vec<Slot> = instances
            .iter()
            .enumerate()
            .map(|(id, url)| {
                let authority: Authority = format!(
                    "{}:{}",
                    url.host_str().unwrap_or("127.0.0.1"),
                    url.port_or_known_default().unwrap_or(80)
                )
                .parse()
                .expect("a URL host and port form an authority");
                let passive = Arc::new(PassiveHealth::new(id, health.eject_after, eject_tx.clone()));
                let endpoint = Endpoint::new(authority, pool.as_str(), passive.clone());
                let _ = changes.send(Change::Insert(id, Ranked::new(endpoint.clone(), DEFAULT_RTT)));
                gauge(pool, &endpoint, true);
                Slot {
                    endpoint,
                    passive,
                    in_rotation: true,
                    failed: 0,
                    passed: 0,
                }
            })
            .collect();
        let registry = Arc::new(Self {
            pool,
            in_rotation: AtomicUsize::new(slots.len()),
            slots: Mutex::new(slots),
            changes,
            ejections: Mutex::new(Some(eject_rx)),
            client,
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)));
        (registry, Box::pin(stream))
    }

    /// Instances in rotation.
    pub fn in_rotation(&self) -> usize {
        self.in_rotation.load(Ordering::Acquire)
    }

    /// Puts an instance in or out of rotation, saying `why` in the log line.
    fn set(&self, slot: &mut Slot, id: usize, up: bool, why: &str) {
        if slot.in_rotation == up {
            return;
        }
        slot.in_rotation = up;
        slot.failed = 0;
        slot.passed = 0;
        slot.passive.reset();
        let change = if up {
            self.in_rotation.fetch_add(1, Ordering::AcqRel);
            Change::Insert(id, Ranked::new(slot.endpoint.clone(), DEFAULT_RTT))
        } else {
            self.in_rotation.fetch_sub(1, Ordering::AcqRel);
            Change::Remove(id)
        };
        let _ = self.changes.send(change);
        gauge(self.pool, &slot.endpoint, up);
        tracing::warn!(
            pool = self.pool.as_str(),
            instance = %slot.endpoint.instance(),
            in_rotation = up,
            why,
            "upstream instance {}",
            if up { "back in rotation" } else { "taken out of rotation" }
        );
    }

    async fn probe(&self, endpoint: &Endpoint, timeout: std::time::Duration) -> Probe {
        let req = Request::get(endpoint.uri(PathAndQuery::from_static("/healthz")))
            .header("user-agent", "mall-gateway-health")
            .body(Body::empty())
            .expect("static request");
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(res)) if res.status().is_success() => Probe::Passed,
            Ok(Ok(res)) => Probe::Failed(format!("answered {}", res.status())),
            Ok(Err(e)) => Probe::Failed(format!("{e} ({:?})", std::error::Error::source(&e))),
            Err(_) => Probe::Late,
        }
    }
}

/// What one health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// A 2xx answer.
    Passed,
    /// Another answer, or no connection (which).
    Failed(String),
    /// No answer within the timeout.
    Late,
}

/// Whether a check counts as a failure: a late one does not when the instance answered requests
/// meanwhile (see the module docs).
fn failed(probe: &Probe, answered_meanwhile: bool) -> Option<bool> {
    match probe {
        Probe::Passed => Some(false),
        Probe::Failed(_) => Some(true),
        Probe::Late if answered_meanwhile => None,
        Probe::Late => Some(true),
    }
}

fn gauge(pool: PoolName, endpoint: &Endpoint, up: bool) {
    metrics::gauge!(
        "gateway_upstream_in_rotation",
        "pool" => pool.as_str(), "upstream" => endpoint.instance().to_string()
    )
    .set(if up { 1.0 } else { 0.0 });
}

/// The health task of one pool: checks on a timer, ejections as they come, until `cancel`.
pub(super) async fn run(registry: Arc<Registry>, settings: HealthSettings, cancel: CancellationToken) {
    let Some(mut ejections) = registry.ejections.lock().await.take() else {
        return;
    };
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u32;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            Some((id, why)) = ejections.recv() => registry.eject(id, &why).await,
            _ = tick.tick() => {
                // Never the `answered_in` mark's initial value, so a new instance starts unmarked.
                round = round.wrapping_add(1) % u32::MAX;
                registry.check_round(round, &settings).await;
            }
        }
    }
}

impl Registry {
    /// Takes an instance out of rotation on its failed requests (passive ejection).
    async fn eject(&self, id: usize, why: &str) {
        let mut slots = self.slots.lock().await;
        let Some(slot) = slots.get_mut(id) else { return };
        if slot.in_rotation && self.in_rotation() == 1 {
            // The last instance in rotation is left to the checks, which tell busy from down
            // (see the module docs): failed requests alone are no proof, as a burst of connects
            // to a saturated instance times some out. Envoy's outlier detection stops short of
            // the last hosts likewise (its panic threshold).
            tracing::warn!(
                pool = self.pool.as_str(),
                instance = %slot.endpoint.instance(),
                why,
                "upstream instance failing requests left in rotation: it is the last one; the health checks decide"
            );
        } else {
            self.set(slot, id, false, why);
        }
    }

    /// Probes every instance once and applies the verdicts (`round` numbers the checks).
    async fn check_round(&self, round: u32, settings: &HealthSettings) {
        let endpoints: Vec<Endpoint> = self
            .slots
            .lock()
            .await
            .iter()
            .map(|s| {
                s.passive.begin_round(round);
                s.endpoint.clone()
            })
            .collect();
        let results = join_all(endpoints.iter().map(|e| self.probe(e, settings.timeout))).await;
        let mut slots = self.slots.lock().await;
        for (id, probe) in results.into_iter().enumerate() {
            let slot = &mut slots[id];
            let Some(failed) = failed(&probe, slot.passive.answered_in(round)) else {
                tracing::debug!(
                    pool = self.pool.as_str(),
                    instance = %slot.endpoint.instance(),
                    "health check late while the instance answers requests; no verdict"
                );
                continue;
            };
            if !failed {
                // A passing probe clears the failure mark the balancer ranks by.
                slot.passive.reset();
                slot.failed = 0;
                slot.passed += 1;
                if !slot.in_rotation && slot.passed >= settings.healthy_after {
                    let why = format!("{} passed health checks in a row", slot.passed);
                    self.set(slot, id, true, &why);
                }
            } else {
                slot.passed = 0;
                slot.failed += 1;
                if slot.in_rotation && slot.failed >= settings.unhealthy_after {
                    let last = match &probe {
                        Probe::Failed(why) => why.as_str(),
                        _ => "no answer in time, and no request answered meanwhile",
                    };
                    let why = format!("{} failed health checks in a row, the last: {last}", slot.failed);
                    self.set(slot, id, false, &why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_check_fails_only_an_instance_that_answered_nothing_meanwhile() {
        assert_eq!(failed(&Probe::Passed, false), Some(false));
        let refused = Probe::Failed("answered 503 Service Unavailable".into());
        assert_eq!(
            failed(&refused, true),
            Some(true),
            "an error answer is a failure, busy or not"
        );
        assert_eq!(failed(&Probe::Late, false), Some(true));
        assert_eq!(failed(&Probe::Late, true), None);
    }

    #[test]
    fn answers_are_marked_in_the_round_they_came_in() {
        let (tx, _rx) = unbounded_channel();
        let passive = PassiveHealth::new(0, 3, tx);
        passive.begin_round(1);
        assert!(!passive.answered_in(1), "nothing answered yet");
        passive.success();
        assert!(passive.answered_in(1));
        passive.begin_round(2);
        assert!(
            !passive.answered_in(2),
            "an answer of the last round does not count for this one"
        );
    }
}
