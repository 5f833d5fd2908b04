//! One log line when a repeating task starts failing and one when it works again, with how many
//! attempts failed in between, instead of a line per attempt (a loop retrying every 20 ms
//! against a dead broker wrote hundreds of warnings a second).

use std::fmt::Display;
use std::time::Instant;

/// The failure state of one repeating task (a relay, a hand-off, a job).
#[derive(Debug)]
pub struct Outage {
    task: &'static str,
    since: Option<(Instant, u64)>,
}

impl Outage {
    /// A task that works until told otherwise.
    pub const fn new(task: &'static str) -> Self {
        Self { task, since: None }
    }

    /// An attempt failed: a warning for the first failure, a debug line for the others.
    pub fn failed(&mut self, error: &dyn Display) {
        match &mut self.since {
            None => {
                tracing::warn!(task = self.task, %error, "failing; retrying (logged again when it works)");
                self.since = Some((Instant::now(), 1));
            }
            Some((_, count)) => {
                *count += 1;
                tracing::debug!(task = self.task, %error, failures = *count, "still failing");
            }
        }
    }

    /// An attempt worked: after an outage, one line saying how long and how many failures.
    pub fn succeeded(&mut self) {
        if let Some((since, failures)) = self.since.take() {
            tracing::info!(task = self.task, failures, lasted = ?since.elapsed(), "works again");
        }
    }

    /// Whether the last attempt failed.
    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Outage;

    #[test]
    fn a_hundred_failures_are_two_lines_naming_the_count() {
        let logs = crate::test_logs::CapturedLogs::start();
        let mut outage = Outage::new("hand-off");
        outage.succeeded();
        for _ in 0..100 {
            outage.failed(&"connection refused");
        }
        assert!(outage.is_failing());
        outage.succeeded();
        outage.succeeded();
        assert!(!outage.is_failing());
        let text = logs.text();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(
            logged[0].contains("WARN") && logged[0].contains("connection refused"),
            "{text}"
        );
        assert!(
            logged[1].contains("INFO") && logged[1].contains("failures=100"),
            "{text}"
        );
    }
}
