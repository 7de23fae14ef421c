//! The live progress table of `dietstream lag --watch`: per processor, how far its consumer
//! group has committed, how fast it moved since the previous sample, and how far behind the
//! ends of its topics it is. Measured from outside the processors (DESIGN decision 7), so a
//! stuck processor shows a rate of 0 and a growing lag.

use std::time::Duration;

/// One processor's position at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The processor's name in the topology.
    pub processor: String,
    /// Committed offsets summed over its partitions.
    pub committed: i64,
    /// Records between the committed offsets and the ends of its topics.
    pub lag: i64,
}

/// The table's header line, aligned with [`rows`], naming the time since the watch began.
pub fn header(since_start: Duration) -> String {
    format!(
        "{:<12} {:>12} {:>10} {:>10} {:>8}",
        format!("t+{}s", since_start.as_secs()),
        "committed",
        "records/s",
        "lag",
        "eta"
    )
}

/// One line per processor of `current`. Rates compare with the same processor in `previous`,
/// taken `elapsed` earlier; without a previous sample (or time) the rate shows as `-`. The ETA
/// is the lag over the rate, `-` when the rate is 0 and the lag is not.
pub fn rows(previous: &[Sample], current: &[Sample], elapsed: Duration) -> Vec<String> {
    current
        .iter()
        .map(|now| {
            let rate = previous
                .iter()
                .find(|p| p.processor == now.processor)
                .filter(|_| !elapsed.is_zero())
                .map(|before| {
                    (now.committed - before.committed).max(0) as f64 / elapsed.as_secs_f64()
                });
            let eta = match rate {
                _ if now.lag == 0 => "0s".to_owned(),
                Some(r) if r > 0.0 => format!("{:.0}s", (now.lag as f64 / r).ceil()),
                _ => "-".to_owned(),
            };
            let rate = rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"));
            format!(
                "{:<12} {:>12} {:>10} {:>10} {:>8}",
                now.processor, now.committed, rate, now.lag, eta
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(processor: &str, committed: i64, lag: i64) -> Sample {
        Sample {
            processor: processor.to_owned(),
            committed,
            lag,
        }
    }

    fn columns(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn rate_is_the_committed_progress_per_second_and_eta_the_lag_over_it() {
        let before = [sample("nutrition", 1_000, 900), sample("quests", 50, 10)];
        let now = [sample("nutrition", 1_600, 300), sample("quests", 50, 10)];
        let lines = rows(&before, &now, Duration::from_secs(2));
        assert_eq!(
            columns(&lines[0]),
            ["nutrition", "1600", "300", "300", "1s"]
        );
        // A stuck processor: no progress, lag left, so no ETA.
        assert_eq!(columns(&lines[1]), ["quests", "50", "0", "10", "-"]);
    }

    #[test]
    fn first_sample_has_no_rate_and_caught_up_has_eta_zero() {
        let lines = rows(&[], &[sample("engagement", 42, 0)], Duration::from_secs(2));
        assert_eq!(columns(&lines[0]), ["engagement", "42", "-", "0", "0s"]);
        let zero = rows(
            &[sample("engagement", 40, 2)],
            &[sample("engagement", 42, 0)],
            Duration::ZERO,
        );
        assert_eq!(columns(&zero[0])[2], "-");
    }

    #[test]
    fn a_group_that_restarted_from_fewer_committed_records_never_shows_a_negative_rate() {
        let lines = rows(
            &[sample("indexer", 500, 0)],
            &[sample("indexer", 100, 400)],
            Duration::from_secs(1),
        );
        assert_eq!(columns(&lines[0])[2], "0");
    }

    #[test]
    fn header_and_rows_line_up() {
        let line = &rows(&[], &[sample("nutrition", 1, 1)], Duration::ZERO)[0];
        assert_eq!(header(Duration::from_secs(125)).len(), line.len());
        assert!(header(Duration::from_secs(125)).starts_with("t+125s "));
    }
}
