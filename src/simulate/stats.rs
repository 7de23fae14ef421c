//! Counters of a simulation run: what was sent and how it was answered, latencies, and the
//! progress line and summary built from them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::generator::Planned;
use crate::bus::CommandOutcome;

/// The figures of a run so far (or at its end).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Commands sent (including those that got no result, and resends).
    pub sent: u64,
    /// Of `sent`, commands sent again after a `CONCURRENCY_CONFLICT` rejection (each attempt
    /// counted; the rejections they follow stay counted in `rejected`).
    pub resent: u64,
    /// Of `resent`, resends that were accepted.
    pub resent_accepted: u64,
    /// Commands accepted.
    pub accepted: u64,
    /// Commands rejected, by reason (the Avro symbol, e.g. `CONCURRENCY_CONFLICT`).
    pub rejected: BTreeMap<String, u64>,
    /// Commands that got no result within the timeout.
    pub timeouts: u64,
    /// Commands that could not be sent (encoding, Kafka), by error text.
    pub errors: u64,
    /// Commands sent invalid on purpose.
    pub deliberate: u64,
    /// Deliberately invalid commands that were nevertheless accepted (a processor that
    /// validates less than expected).
    pub deliberate_accepted: u64,
    /// Valid commands that were rejected (stale state in the simulator, or a strict processor).
    pub unexpected_rejections: u64,
    /// Players that stopped: registration refused, or a command without result.
    pub users_stopped: u64,
    /// Wall-clock time of the run.
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
    /// Median time from send to result.
    #[serde(with = "humantime_serde")]
    pub p50: Option<Duration>,
    /// 99th percentile of the time from send to result.
    #[serde(with = "humantime_serde")]
    pub p99: Option<Duration>,
}

impl Summary {
    /// Commands sent per second of wall-clock time.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// Total of rejected commands.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".to_owned())
        };
        write!(
            f,
            "sent {} | accepted {} | rejected {}",
            self.sent,
            self.accepted,
            self.rejected_total()
        )?;
        if !self.rejected.is_empty() {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        if self.resent > 0 {
            write!(
                f,
                " | resent {} ({} accepted)",
                self.resent, self.resent_accepted
            )?;
        }
        write!(
            f,
            " | timeouts {} | errors {} | {:.1}/s | p50 {} p99 {} | {:.0} s",
            self.timeouts,
            self.errors,
            self.rate(),
            ms(self.p50),
            ms(self.p99),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Running counters; [`Stats::summary`] turns them into a [`Summary`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    summary: Summary,
    /// Latencies in microseconds, unsorted.
    latencies: Vec<u64>,
}

impl Stats {
    pub(crate) fn sent(&mut self, planned: &Planned) {
        self.summary.sent += 1;
        if planned.deliberate.is_some() {
            self.summary.deliberate += 1;
        }
        if planned.resend > 0 {
            self.summary.resent += 1;
        }
    }

    pub(crate) fn answered(
        &mut self,
        outcome: &CommandOutcome,
        planned: &Planned,
        latency: Duration,
    ) {
        let deliberate = planned.deliberate;
        self.latencies
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        match outcome {
            CommandOutcome::Accepted { .. } => {
                self.summary.accepted += 1;
                if deliberate.is_some() {
                    self.summary.deliberate_accepted += 1;
                }
                if planned.resend > 0 {
                    self.summary.resent_accepted += 1;
                }
            }
            CommandOutcome::Rejected { reason, .. } => {
                let name = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{reason:?}"));
                *self.summary.rejected.entry(name).or_default() += 1;
                if deliberate.is_none() {
                    self.summary.unexpected_rejections += 1;
                }
            }
        }
    }

    pub(crate) fn timed_out(&mut self) {
        self.summary.timeouts += 1;
    }

    pub(crate) fn failed(&mut self) {
        self.summary.errors += 1;
    }

    pub(crate) fn user_stopped(&mut self) {
        self.summary.users_stopped += 1;
    }

    pub(crate) fn summary(&self, elapsed: Duration) -> Summary {
        let mut summary = self.summary.clone();
        summary.elapsed = elapsed;
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        summary.p50 = percentile(&sorted, 0.50);
        summary.p99 = percentile(&sorted, 0.99);
        summary
    }
}

/// Nearest-rank percentile of sorted microseconds.
fn percentile(sorted: &[u64], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(Duration::from_micros(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{Deliberate, GeneratorConfig, UserSim};
    use dietstream_schemas::types::RejectionReason;

    #[test]
    fn percentiles_reasons_and_resends() {
        let first = UserSim::new(&GeneratorConfig::new(1, 1), 0)
            .next_command()
            .expect("a command");
        let stale = Planned {
            deliberate: Some(Deliberate::StaleVersion),
            ..first.clone()
        };
        let resend = Planned {
            resend: 1,
            ..first.clone()
        };
        let accepted = CommandOutcome::Accepted {
            new_version: 1,
            event_ids: Vec::new(),
        };
        let conflict = CommandOutcome::Rejected {
            reason: RejectionReason::ConcurrencyConflict,
            message: String::new(),
            field: None,
            expected_version: None,
            current_version: None,
        };
        let mut stats = Stats::default();
        for ms in 1..=99 {
            stats.sent(&first);
            stats.answered(&accepted, &first, Duration::from_millis(ms));
        }
        stats.sent(&stale);
        stats.answered(&conflict, &stale, Duration::from_millis(1));
        stats.sent(&first);
        stats.answered(&conflict, &first, Duration::from_millis(100));
        stats.sent(&resend);
        stats.answered(&accepted, &resend, Duration::from_millis(100));
        let summary = stats.summary(Duration::from_secs(10));
        assert_eq!(summary.sent, 102);
        assert_eq!(summary.accepted, 100);
        assert_eq!(summary.rejected.get("CONCURRENCY_CONFLICT"), Some(&2));
        assert_eq!(summary.unexpected_rejections, 1);
        assert_eq!((summary.resent, summary.resent_accepted), (1, 1));
        assert_eq!(summary.p50, Some(Duration::from_millis(50)));
        assert_eq!(summary.p99, Some(Duration::from_millis(100)));
        assert!((summary.rate() - 10.2).abs() < 1e-9);
        let line = summary.to_string();
        assert!(line.contains("CONCURRENCY_CONFLICT 2"), "{line}");
        assert!(line.contains("resent 1 (1 accepted)"), "{line}");
    }
}
