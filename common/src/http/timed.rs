//! Request counters and duration histograms by label set, each looked up in the metrics
//! registry once.
//!
//! A `counter!`/`histogram!` call with labels builds its key (allocating the label list) and
//! hashes it into the registry on every call; the server stack and the gateway's upstream
//! calls count every request, so they keep the handles of the few label sets they see.

use std::sync::RwLock;

use metrics::{Counter, Histogram};

/// Handles by key `K` (what tells label sets apart, e.g. route, method and status).
pub struct Timed<K> {
    handles: RwLock<Vec<(K, Counter, Histogram)>>,
}

impl<K> Default for Timed<K> {
    fn default() -> Self {
        Self {
            handles: RwLock::new(Vec::new()),
        }
    }
}

impl<K> Timed<K> {
    /// Counts one request and records its duration under the handles whose key `is` matches,
    /// made by `make` (key, counter, histogram) the first time.
    pub fn record(
        &self,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, Counter, Histogram),
        seconds: f64,
    ) {
        let hit = |list: &[(K, Counter, Histogram)]| {
            list.iter().find(|(k, ..)| is(k)).map(|(_, count, time)| {
                count.increment(1);
                time.record(seconds);
            })
        };
        // Read first: after the first few requests every label set is known.
        if hit(&self.handles.read().unwrap_or_else(|e| e.into_inner())).is_some() {
            return;
        }
        let mut list = self.handles.write().unwrap_or_else(|e| e.into_inner());
        if hit(&list).is_some() {
            return;
        }
        let (key, count, time) = make();
        count.increment(1);
        time.record(seconds);
        list.push((key, count, time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_label_set_is_made_once_and_counted_every_time() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let timed: Timed<u16> = Timed::default();
        let made = std::cell::Cell::new(0);
        metrics::with_local_recorder(&recorder, || {
            for status in [200, 200, 404, 200] {
                timed.record(
                    |k| *k == status,
                    || {
                        made.set(made.get() + 1);
                        let labels = [("status", status.to_string())];
                        (
                            status,
                            metrics::counter!("t_total", &labels),
                            metrics::histogram!("t_seconds", &labels),
                        )
                    },
                    0.5,
                );
            }
        });
        assert_eq!(made.get(), 2, "one make per label set");
        let text = handle.render();
        assert!(text.contains(r#"t_total{status="200"} 3"#), "{text}");
        assert!(text.contains(r#"t_total{status="404"} 1"#), "{text}");
        assert!(text.contains(r#"t_seconds_count{status="200"} 3"#), "{text}");
    }
}
