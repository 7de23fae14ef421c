//! Unit tests of the indexer's pure parts: days, keys, dead-letter headers, retry policy and
//! configuration.

use std::time::Duration;

use dietstream_schemas::codec::CodecError;

use dietstream_schemas::headers::DeadLetter;

use crate::processor::split_event_key;
use crate::tables::{cql_date, cql_timestamp, day_of_micros, migrations};
use crate::IndexerConfig;
use dietstream_runtime::dead_letter::{dead_letter_headers, Rejection};

const DAY: i64 = 86_400_000_000;

#[test]
fn day_is_the_utc_date_of_the_timestamp() {
    assert_eq!(day_of_micros(0), 0);
    assert_eq!(day_of_micros(DAY - 1), 0);
    assert_eq!(day_of_micros(DAY), 1);
    // Before the epoch the day rounds down, not towards zero.
    assert_eq!(day_of_micros(-1), -1);
    assert_eq!(day_of_micros(-DAY), -1);
    assert_eq!(day_of_micros(-DAY - 1), -2);
    // 2025-11-26T12:26:40Z is day 20418.
    assert_eq!(day_of_micros(1_764_160_000_000_000), 20_418);
    assert_eq!(cql_date(0).0, 1 << 31);
    assert_eq!(cql_date(20_418).0, (1 << 31) + 20_418);
    assert_eq!(cql_date(-1).0, (1 << 31) - 1);
    assert_eq!(cql_timestamp(1_764_160_000_123_999).0, 1_764_160_000_123);
    assert_eq!(cql_timestamp(-1).0, -1);
}

#[test]
fn event_keys_split_at_the_last_slash() {
    assert_eq!(split_event_key("user-42/3"), Some(("user-42", 3)));
    assert_eq!(split_event_key("cache/food/12"), Some(("cache/food", 12)));
    assert_eq!(split_event_key("user-42"), None);
    assert_eq!(split_event_key("user-42/x"), None);
}

fn letter(offset: i64) -> DeadLetter<'static> {
    DeadLetter {
        original_topic: "diet.events.user",
        original_partition: 2,
        original_offset: offset,
        original_timestamp_ms: Some(1_764_160_000_000),
        error_class: "unknown_schema_id",
        error_message: "unknown schema id 99",
        processor: "indexer",
        dead_letter_topic: "diet.dlq.indexer",
        retry_count: 0,
        max_retries: 10,
        failed_at_ms: 1_764_160_001_000,
    }
}

fn text(headers: &[(String, Option<Vec<u8>>)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8(v.clone().unwrap_or_default()).expect("UTF-8"))
        .collect()
}

#[test]
fn dead_letter_headers_keep_the_original_ones_and_add_the_context() {
    let original = vec![
        (
            "event_type".to_owned(),
            Some(b"nutrition.meal.logged".to_vec()),
        ),
        ("dietstream.source".to_owned(), Some(b"commands".to_vec())),
        ("empty".to_owned(), None),
    ];
    let headers = dead_letter_headers(&original, &letter(41));
    assert_eq!(&headers[..3], &original[..]);
    let added = letter(41).headers();
    assert_eq!(headers.len(), original.len() + added.len());
    for (name, value) in added {
        assert_eq!(text(&headers, name), vec![value], "{name}");
    }
    assert_eq!(text(&headers, "dietstream.dlq.original_offset"), vec!["41"]);
    assert_eq!(text(&headers, "dietstream.dlq.processor"), vec!["indexer"]);
}

#[test]
fn a_dead_letter_of_a_dead_letter_carries_each_header_once() {
    let first = dead_letter_headers(&[], &letter(41));
    let second = dead_letter_headers(&first, &letter(7));
    assert_eq!(second.len(), first.len());
    assert_eq!(text(&second, "dietstream.dlq.original_offset"), vec!["7"]);
}

#[test]
fn codec_errors_map_to_bounded_classes() {
    let class = |e: CodecError| Rejection::from_codec(&e).class;
    assert_eq!(class(CodecError::BadMagic { found: 7 }), "bad_magic");
    assert_eq!(class(CodecError::TooShort { len: 2 }), "truncated");
    assert_eq!(
        class(CodecError::UnexpectedType {
            expected: "an event record",
            found: "x.Y".to_owned()
        }),
        "unexpected_type"
    );
}

#[test]
fn configuration_problems_name_the_setting() {
    let poll = Duration::from_secs(300);
    assert!(IndexerConfig::default().problems(poll).is_empty());
    let mut config = IndexerConfig {
        batch_size: 0,
        max_in_flight: 0,
        ..IndexerConfig::default()
    };
    config.retry.backoff_multiplier = 0.5;
    let problems = config.problems(poll);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("indexer.batch_size"));
    assert!(problems[2].starts_with("indexer.retry.backoff_multiplier"));

    let slow = IndexerConfig::default();
    let problems = slow.problems(Duration::from_secs(30));
    assert!(problems[0].contains("max.poll.interval.ms"), "{problems:?}");
}

#[test]
fn configuration_is_read_with_humantime_durations_and_rejects_unknown_keys() {
    let config: IndexerConfig = serde_json::from_str(
        r#"{"batch_size": 100, "retry": {"retry_delay": "50ms", "backoff_multiplier": 3.0, "max_retry_delay": "2s", "max_retries": 4}}"#,
    )
    .expect("valid");
    assert_eq!(config.batch_size, 100);
    assert_eq!(config.max_in_flight, IndexerConfig::default().max_in_flight);
    assert_eq!(config.retry.retry_delay, Duration::from_millis(50));
    assert_eq!(config.retry.max_retry_delay, Duration::from_secs(2));
    assert!(serde_json::from_str::<IndexerConfig>(r#"{"batch": 1}"#).is_err());
}

#[test]
fn every_migration_is_idempotent_and_in_the_keyspace() {
    for statement in migrations("ks") {
        assert!(
            statement.starts_with("CREATE TABLE IF NOT EXISTS ks."),
            "{statement}"
        );
    }
}
