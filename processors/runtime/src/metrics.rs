//! The Prometheus metrics a processor reports (DESIGN decision 7), behind typed methods so that
//! no caller spells a metric name or a label.
//!
//! Every metric carries the label `processor` (fixed per [`ProcessorMetrics`] handle), so that
//! the processors of one process (`run all`) share one registry. The other labels are bounded:
//! topics, partitions, event and command types, tables and error codes come from code and
//! configuration, never from a record's content such as a user id.
//!
//! | metric | type | unit | labels | what |
//! |---|---|---|---|---|
//! | `dietstream_records_consumed_total` | counter | records | `topic` | Kafka records read, needed or not. |
//! | `dietstream_records_skipped_total` | counter | records | `topic` | Records not needed by this processor, skipped by their event-type header without decoding. |
//! | `dietstream_events_processed_total` | counter | events | `event_type` | Events applied to the read model. |
//! | `dietstream_errors_total` | counter | errors | `error_code` | Errors by kind (`bad_magic`, `unknown_schema_id`, `invalid_payload`, `rule_violation`, `cql_timeout`, `kafka`, ...), each attempt that failed, retried or not. |
//! | `dietstream_dead_letters_total` | counter | records | `error_code` | Records sent to the dead-letter topic for a permanent error. |
//! | `dietstream_retries_total` | counter | retries | `error_code` | Retries in place after a transient error. |
//! | `dietstream_batch_duration_seconds` | histogram | seconds | — | Time to process one batch, from poll to offsets stored (1 ms to 10 s). |
//! | `dietstream_batch_records` | histogram | records | — | Records in one batch. |
//! | `dietstream_cql_write_duration_seconds` | histogram | seconds | `table` | Time from sending one CQL write to its acknowledgement (0.5 ms to 5 s). |
//! | `dietstream_freshness_seconds` | histogram | seconds | — | End-to-end freshness: from the event's timestamp to the acknowledgement of the write that applied it (5 ms to 5 min). |
//! | `dietstream_assigned_partitions` | gauge | partitions | — | Partitions currently assigned to this consumer. |
//! | `dietstream_consumer_lag_records` | gauge | records | `topic`, `partition` | Records between this consumer's position and the partition's end, as the consumer sees it; the series goes when the partition is revoked or lost. |
//! | `dietstream_rebalances_total` | counter | rebalances | `kind` | Rebalance callbacks by kind (`assigned`, `revoked`, `lost`). |
//! | `dietstream_commands_sent_total` | counter | commands | `command_type` | Commands sent to the command processor (quest completed, XP awarded, ...). |
//!
//! The consumer's own lag stops moving when the consumer is stuck; the lag measured from
//! outside the consumers is another component's job.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

const RECORDS_CONSUMED: &str = "dietstream_records_consumed_total";
const RECORDS_SKIPPED: &str = "dietstream_records_skipped_total";
const EVENTS_PROCESSED: &str = "dietstream_events_processed_total";
const ERRORS: &str = "dietstream_errors_total";
const DEAD_LETTERS: &str = "dietstream_dead_letters_total";
const RETRIES: &str = "dietstream_retries_total";
const BATCH_DURATION: &str = "dietstream_batch_duration_seconds";
const BATCH_RECORDS: &str = "dietstream_batch_records";
const CQL_WRITE_DURATION: &str = "dietstream_cql_write_duration_seconds";
const FRESHNESS: &str = "dietstream_freshness_seconds";
const ASSIGNED_PARTITIONS: &str = "dietstream_assigned_partitions";
const CONSUMER_LAG: &str = "dietstream_consumer_lag_records";
const REBALANCES: &str = "dietstream_rebalances_total";
const COMMANDS_SENT: &str = "dietstream_commands_sent_total";

/// The label that tells the processors of one registry apart.
const PROCESSOR_LABEL: &str = "processor";

/// 1 ms (a small batch of skipped records) to 10 s (a batch held up by retries).
const BATCH_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One record up to well past the processors' configured batch sizes (hundreds).
const BATCH_RECORDS_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// 0.5 ms (a local node) to 5 s (the driver's request timeout range).
const CQL_WRITE_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// 5 ms (a live pipeline) to 5 min (catching up after a restart or a replay). From 5 ms to
/// 2.5 s each bound is at most 1.5 times the one before (10 ms is 2), because
/// `histogram_quantile` interpolates within a bucket: a p99 read from a bucket of 250 to
/// 500 ms could be off by 250 ms.
const FRESHNESS_BUCKETS: [f64; 27] = [
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Which rebalance callback fired (`dietstream_rebalances_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions were assigned to this consumer.
    Assigned,
    /// Partitions were taken away in an orderly rebalance; in-flight work could be committed.
    Revoked,
    /// Partitions were lost (session timeout, fenced): their offsets could not be committed.
    Lost,
}

impl Rebalance {
    const ALL: [Rebalance; 3] = [Rebalance::Assigned, Rebalance::Revoked, Rebalance::Lost];

    /// The value of the `kind` label.
    pub const fn label(self) -> &'static str {
        match self {
            Rebalance::Assigned => "assigned",
            Rebalance::Revoked => "revoked",
            Rebalance::Lost => "lost",
        }
    }
}

/// The metrics of one processor, registered once at start; cheap to clone and to share between
/// tasks.
#[derive(Clone)]
pub struct ProcessorMetrics {
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ProcessorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorMetrics").finish_non_exhaustive()
    }
}

/// The metric vectors of one processor. Each has the `processor` label as a constant label, so
/// two processors register the same names on one registry as distinct series, which the
/// registry merges into one family per name when gathered.
#[derive(Clone)]
struct Metrics {
    records_consumed: IntCounterVec,
    records_skipped: IntCounterVec,
    events_processed: IntCounterVec,
    errors: IntCounterVec,
    dead_letters: IntCounterVec,
    retries: IntCounterVec,
    batch_duration: Histogram,
    batch_records: Histogram,
    cql_write_duration: HistogramVec,
    freshness: Histogram,
    assigned_partitions: IntGauge,
    consumer_lag: IntGaugeVec,
    rebalances: IntCounterVec,
    commands_sent: IntCounterVec,
}

impl ProcessorMetrics {
    /// The name of every metric, in the order of the table in the module documentation.
    pub const NAMES: [&'static str; 14] = [
        RECORDS_CONSUMED,
        RECORDS_SKIPPED,
        EVENTS_PROCESSED,
        ERRORS,
        DEAD_LETTERS,
        RETRIES,
        BATCH_DURATION,
        BATCH_RECORDS,
        CQL_WRITE_DURATION,
        FRESHNESS,
        ASSIGNED_PARTITIONS,
        CONSUMER_LAG,
        REBALANCES,
        COMMANDS_SENT,
    ];

    /// Registers the metrics of `processor` on `registry`, all at once or not at all. Fails
    /// with [`prometheus::Error::AlreadyReg`] when that processor already has metrics there.
    pub fn new(processor: &str, registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(
                Opts::new(name, help).const_label(PROCESSOR_LABEL, processor),
                &[label],
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label(PROCESSOR_LABEL, processor)
                    .buckets(buckets.to_vec()),
            )
        };
        let metrics = Metrics {
            records_consumed: counter(RECORDS_CONSUMED, "Kafka records read.", "topic")?,
            records_skipped: counter(
                RECORDS_SKIPPED,
                "Kafka records skipped by their event-type header without decoding.",
                "topic",
            )?,
            events_processed: counter(
                EVENTS_PROCESSED,
                "Events applied to the read model.",
                "event_type",
            )?,
            errors: counter(ERRORS, "Errors by kind.", "error_code")?,
            dead_letters: counter(
                DEAD_LETTERS,
                "Records sent to the dead-letter topic.",
                "error_code",
            )?,
            retries: counter(
                RETRIES,
                "Retries in place after a transient error.",
                "error_code",
            )?,
            batch_duration: histogram(
                BATCH_DURATION,
                "Time to process one batch, from poll to offsets stored.",
                &BATCH_DURATION_BUCKETS,
            )?,
            batch_records: histogram(
                BATCH_RECORDS,
                "Records in one batch.",
                &BATCH_RECORDS_BUCKETS,
            )?,
            cql_write_duration: HistogramVec::new(
                HistogramOpts::new(
                    CQL_WRITE_DURATION,
                    "Time from sending one CQL write to its acknowledgement.",
                )
                .const_label(PROCESSOR_LABEL, processor)
                .buckets(CQL_WRITE_BUCKETS.to_vec()),
                &["table"],
            )?,
            freshness: histogram(
                FRESHNESS,
                "Time from an event's timestamp to the acknowledgement of the write that applied it.",
                &FRESHNESS_BUCKETS,
            )?,
            assigned_partitions: IntGauge::with_opts(
                Opts::new(
                    ASSIGNED_PARTITIONS,
                    "Partitions currently assigned to this consumer.",
                )
                .const_label(PROCESSOR_LABEL, processor),
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    CONSUMER_LAG,
                    "Records between the consumer's position and the partition's end.",
                )
                .const_label(PROCESSOR_LABEL, processor),
                &["topic", "partition"],
            )?,
            rebalances: counter(REBALANCES, "Rebalance callbacks by kind.", "kind")?,
            commands_sent: counter(
                COMMANDS_SENT,
                "Commands sent to the command processor.",
                "command_type",
            )?,
        };
        // Every kind from zero, so that `increase()` sees the first rebalance.
        for kind in Rebalance::ALL {
            metrics.rebalances.with_label_values(&[kind.label()]);
        }
        // One collector for all: the registry checks every name before it keeps any, so a
        // failed registration leaves nothing behind.
        registry.register(Box::new(metrics.clone()))?;
        Ok(ProcessorMetrics {
            metrics: Arc::new(metrics),
        })
    }

    /// Counts `records` Kafka records read from `topic`, needed or not.
    pub fn record_consumed(&self, topic: &str, records: u64) {
        self.metrics
            .records_consumed
            .with_label_values(&[topic])
            .inc_by(records);
    }

    /// Counts `records` records of `topic` skipped by their event-type header.
    pub fn record_skipped(&self, topic: &str, records: u64) {
        self.metrics
            .records_skipped
            .with_label_values(&[topic])
            .inc_by(records);
    }

    /// Counts one event of `event_type` applied to the read model.
    pub fn record_event_processed(&self, event_type: &str) {
        self.metrics
            .events_processed
            .with_label_values(&[event_type])
            .inc();
    }

    /// Counts one error; `error_code` is the fixed code of its kind, never a message.
    pub fn record_error(&self, error_code: &str) {
        self.metrics.errors.with_label_values(&[error_code]).inc();
    }

    /// Counts one record sent to the dead-letter topic for the error `error_code`.
    pub fn record_dead_letter(&self, error_code: &str) {
        self.metrics
            .dead_letters
            .with_label_values(&[error_code])
            .inc();
    }

    /// Counts one retry in place after the transient error `error_code`.
    pub fn record_retry(&self, error_code: &str) {
        self.metrics.retries.with_label_values(&[error_code]).inc();
    }

    /// Records one batch of `records` records that took `duration`.
    pub fn observe_batch(&self, duration: Duration, records: usize) {
        self.metrics.batch_duration.observe(duration.as_secs_f64());
        self.metrics.batch_records.observe(records as f64);
    }

    /// Records one CQL write to `table` acknowledged after `duration`.
    pub fn observe_cql_write(&self, table: &str, duration: Duration) {
        self.metrics
            .cql_write_duration
            .with_label_values(&[table])
            .observe(duration.as_secs_f64());
    }

    /// Records the time from an event's timestamp to the acknowledgement of the write that
    /// applied it.
    pub fn observe_freshness(&self, freshness: Duration) {
        self.metrics.freshness.observe(freshness.as_secs_f64());
    }

    /// Sets the number of partitions currently assigned.
    pub fn set_assigned_partitions(&self, partitions: usize) {
        self.metrics
            .assigned_partitions
            .set(i64::try_from(partitions).unwrap_or(i64::MAX));
    }

    /// Sets the lag, in records, of one assigned partition.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, records: i64) {
        self.metrics
            .consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(records);
    }

    /// Removes the lag series of a partition that was revoked or lost, so that no stale value
    /// stays behind. Forgetting a partition without a series does nothing.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        // An error only says that there was no series to remove.
        let _ = self
            .metrics
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    /// Counts one rebalance callback.
    pub fn record_rebalance(&self, kind: Rebalance) {
        self.metrics
            .rebalances
            .with_label_values(&[kind.label()])
            .inc();
    }

    /// Counts one command of `command_type` sent to the command processor.
    pub fn record_command_sent(&self, command_type: &str) {
        self.metrics
            .commands_sent
            .with_label_values(&[command_type])
            .inc();
    }
}

impl Metrics {
    fn collectors(&self) -> [&dyn Collector; 14] {
        [
            &self.records_consumed,
            &self.records_skipped,
            &self.events_processed,
            &self.errors,
            &self.dead_letters,
            &self.retries,
            &self.batch_duration,
            &self.batch_records,
            &self.cql_write_duration,
            &self.freshness,
            &self.assigned_partitions,
            &self.consumer_lag,
            &self.rebalances,
            &self.commands_sent,
        ]
    }
}

impl Collector for Metrics {
    fn desc(&self) -> Vec<&Desc> {
        self.collectors()
            .into_iter()
            .flat_map(Collector::desc)
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.collectors()
            .into_iter()
            .flat_map(Collector::collect)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use prometheus::proto::MetricType;

    use super::*;

    /// Calls every method of `metrics` once or more, with the values the scrape tests expect.
    pub(crate) fn record_one_of_each(metrics: &ProcessorMetrics) {
        metrics.record_consumed("diet.user.events", 3);
        metrics.record_consumed("diet.user.events", 2);
        metrics.record_skipped("diet.user.events", 1);
        metrics.record_event_processed("MealLogged");
        metrics.record_event_processed("MealLogged");
        metrics.record_error("cql_timeout");
        metrics.record_dead_letter("bad_magic");
        metrics.record_retry("cql_timeout");
        metrics.observe_batch(Duration::from_millis(20), 5);
        metrics.observe_cql_write("daily_nutrition", Duration::from_millis(2));
        metrics.observe_freshness(Duration::from_millis(150));
        metrics.set_assigned_partitions(2);
        metrics.set_consumer_lag("diet.user.events", 0, 7);
        metrics.set_consumer_lag("diet.user.events", 1, 9);
        metrics.record_rebalance(Rebalance::Assigned);
        metrics.record_command_sent("AwardXp");
    }

    /// The gathered families by name.
    fn families(registry: &Registry) -> BTreeMap<String, MetricFamily> {
        registry
            .gather()
            .into_iter()
            .map(|family| (family.name().to_owned(), family))
            .collect()
    }

    /// The label names of a family's first series.
    fn label_names(family: &MetricFamily) -> Vec<String> {
        family.get_metric()[0]
            .get_label()
            .iter()
            .map(|pair| pair.name().to_owned())
            .collect()
    }

    /// (name, labels without `processor`) of each row of the table in the module docs.
    fn documented_metrics() -> Vec<(String, Vec<String>)> {
        include_str!("metrics.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `dietstream_"))
            .map(|row| {
                let cells: Vec<&str> = row.split(" | ").collect();
                let name = format!("dietstream_{}", cells[0].trim_end_matches('`'));
                let labels = cells[3]
                    .split(", ")
                    .filter(|label| *label != "—")
                    .map(|label| label.trim_matches('`').to_owned())
                    .collect();
                (name, labels)
            })
            .collect()
    }

    #[test]
    fn the_documented_metrics_are_the_registered_ones_with_their_labels() {
        let registry = Registry::new();
        let metrics = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        record_one_of_each(&metrics);
        let families = families(&registry);

        let documented = documented_metrics();
        let documented_names: Vec<&str> = documented.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(documented_names, ProcessorMetrics::NAMES);
        let mut gathered_names: Vec<&str> = families.keys().map(String::as_str).collect();
        let mut names = ProcessorMetrics::NAMES.to_vec();
        gathered_names.sort_unstable();
        names.sort_unstable();
        assert_eq!(gathered_names, names);

        for (name, labels) in documented {
            let family = &families[&name];
            let mut expected: Vec<String> = labels;
            expected.push(PROCESSOR_LABEL.to_owned());
            expected.sort();
            let mut actual = label_names(family);
            actual.sort();
            assert_eq!(actual, expected, "labels of {name}");
            let kind = family.get_field_type();
            assert_eq!(
                name.ends_with("_total"),
                kind == MetricType::COUNTER,
                "{name} is a {kind:?}: only counters end in _total"
            );
        }
    }

    #[test]
    fn two_processors_share_one_registry() {
        let registry = Registry::new();
        let nutrition = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        let quests = ProcessorMetrics::new("quests", &registry).expect("registers");
        nutrition.record_event_processed("MealLogged");
        quests.record_event_processed("MealLogged");
        quests.record_event_processed("MealLogged");

        let families = families(&registry);
        let processed = &families[EVENTS_PROCESSED];
        let values: Vec<(String, u64)> = processed
            .get_metric()
            .iter()
            .map(|metric| {
                let processor = metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == PROCESSOR_LABEL)
                    .map(|pair| pair.value().to_owned())
                    .unwrap_or_default();
                let count = metric.get_counter().get_value() as u64;
                (processor, count)
            })
            .collect();
        assert_eq!(
            values,
            [("nutrition".to_owned(), 1), ("quests".to_owned(), 2)]
        );
        // Unlabelled metrics exist once per processor.
        assert_eq!(families[BATCH_DURATION].get_metric().len(), 2);
    }

    #[test]
    fn a_processor_registers_once_per_registry() {
        let registry = Registry::new();
        let first = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        let again = ProcessorMetrics::new("nutrition", &registry);
        assert!(matches!(again, Err(prometheus::Error::AlreadyReg)));

        first.record_error("kafka");
        let errors = &families(&registry)[ERRORS];
        assert_eq!(errors.get_metric().len(), 1);
        assert_eq!(errors.get_metric()[0].get_counter().get_value(), 1.0);
        ProcessorMetrics::new("nutrition", &Registry::new()).expect("another registry takes it");
    }

    #[test]
    fn a_refused_registration_leaves_nothing_behind() {
        // Another collector holds the last of the processor's series: the registration fails
        // there, after all the others were checked.
        let registry = Registry::new();
        let squatter = IntCounterVec::new(
            Opts::new(COMMANDS_SENT, "Commands sent to the command processor.")
                .const_label(PROCESSOR_LABEL, "nutrition"),
            &["command_type"],
        )
        .expect("valid");
        registry
            .register(Box::new(squatter.clone()))
            .expect("registers");
        let refused = ProcessorMetrics::new("nutrition", &registry);
        assert!(matches!(refused, Err(prometheus::Error::AlreadyReg)));

        registry
            .unregister(Box::new(squatter))
            .expect("unregisters");
        ProcessorMetrics::new("nutrition", &registry).expect("no metric of the refusal remains");
    }

    #[test]
    fn forgetting_a_partition_removes_its_lag_series_only() {
        let registry = Registry::new();
        let metrics = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        metrics.set_consumer_lag("diet.user.events", 0, 7);
        metrics.set_consumer_lag("diet.user.events", 1, 9);
        metrics.forget_partition("diet.user.events", 0);
        metrics.forget_partition("diet.user.events", 5);

        let lag = &families(&registry)[CONSUMER_LAG];
        let partitions: Vec<(&str, i64)> = lag
            .get_metric()
            .iter()
            .map(|metric| {
                let partition = metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == "partition")
                    .map(|pair| pair.value())
                    .unwrap_or_default();
                let value = metric.get_gauge().get_value() as i64;
                (partition, value)
            })
            .collect();
        assert_eq!(partitions, [("1", 9)]);
    }

    #[test]
    fn every_rebalance_kind_starts_at_zero() {
        let registry = Registry::new();
        ProcessorMetrics::new("nutrition", &registry).expect("registers");
        assert_eq!(families(&registry)[REBALANCES].get_metric().len(), 3);
    }
}
