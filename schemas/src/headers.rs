//! The Kafka headers of the contract (schemas/README.md, "Kafka headers: retries and dead
//! letters"): their names, and the headers a dead-letter copy of a record carries.

/// Processor or service that produced the record.
pub const SOURCE: &str = "dietstream.source";
/// The one processor meant to handle the record.
pub const DESTINATION: &str = "dietstream.destination";
/// The aggregate id: the partitioner input.
pub const ROUTING_KEY: &str = "dietstream.routing_key";
/// Retries made before the record was dead-lettered.
pub const RETRY_COUNT: &str = "dietstream.retry_count";
/// The RetryPolicy's max retries of the failing processor.
pub const MAX_RETRIES: &str = "dietstream.max_retries";
/// Dead-letter topic of the failing processor.
pub const DEAD_LETTER_TOPIC: &str = "dietstream.dead_letter_topic";
/// Topic the dead letter was consumed from.
pub const DLQ_ORIGINAL_TOPIC: &str = "dietstream.dlq.original_topic";
/// Its partition.
pub const DLQ_ORIGINAL_PARTITION: &str = "dietstream.dlq.original_partition";
/// Its offset.
pub const DLQ_ORIGINAL_OFFSET: &str = "dietstream.dlq.original_offset";
/// Its Kafka timestamp, epoch ms.
pub const DLQ_ORIGINAL_TIMESTAMP: &str = "dietstream.dlq.original_timestamp";
/// Bounded error code (the `error_code` metric label).
pub const DLQ_ERROR_CLASS: &str = "dietstream.dlq.error_class";
/// Human-readable error text, at most [`MAX_ERROR_MESSAGE_BYTES`].
pub const DLQ_ERROR_MESSAGE: &str = "dietstream.dlq.error_message";
/// Processor (consumer group) that failed the record.
pub const DLQ_PROCESSOR: &str = "dietstream.dlq.processor";
/// When it was dead-lettered, epoch ms.
pub const DLQ_FAILED_AT: &str = "dietstream.dlq.failed_at";
/// Read-model generation whose processor failed the record (0: the tables of the plain
/// names; N: a rebuild's `<table>_g<N>`). Set by the read-model runtime.
pub const DLQ_GENERATION: &str = "dietstream.dlq.generation";

/// Error messages are cut to this many bytes (on a character boundary).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Why and where a record failed: everything a dead-letter copy adds to the original headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// Topic the record was consumed from.
    pub original_topic: &'a str,
    /// Its partition.
    pub original_partition: i32,
    /// Its offset.
    pub original_offset: i64,
    /// Its Kafka timestamp, epoch ms (`None` when the record had none).
    pub original_timestamp_ms: Option<i64>,
    /// Bounded error code, e.g. `bad_magic`, `unknown_schema_id`, `invalid_payload`.
    pub error_class: &'a str,
    /// What went wrong, for a human.
    pub error_message: &'a str,
    /// The failing processor.
    pub processor: &'a str,
    /// Its dead-letter topic.
    pub dead_letter_topic: &'a str,
    /// Retries made before giving up; 0 for a permanent error found on the first attempt.
    pub retry_count: u32,
    /// The processor's RetryPolicy max retries.
    pub max_retries: u32,
    /// When the record was dead-lettered, epoch ms.
    pub failed_at_ms: i64,
}

impl DeadLetter<'_> {
    /// The headers to add to the original ones, name and UTF-8 value, in a stable order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (DLQ_ORIGINAL_TOPIC, self.original_topic.to_owned()),
            (DLQ_ORIGINAL_PARTITION, self.original_partition.to_string()),
            (DLQ_ORIGINAL_OFFSET, self.original_offset.to_string()),
            (
                DLQ_ORIGINAL_TIMESTAMP,
                self.original_timestamp_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            ),
            (DLQ_ERROR_CLASS, self.error_class.to_owned()),
            (
                DLQ_ERROR_MESSAGE,
                truncate(self.error_message, MAX_ERROR_MESSAGE_BYTES).to_owned(),
            ),
            (DLQ_PROCESSOR, self.processor.to_owned()),
            (DLQ_FAILED_AT, self.failed_at_ms.to_string()),
            (RETRY_COUNT, self.retry_count.to_string()),
            (MAX_RETRIES, self.max_retries.to_string()),
            (DEAD_LETTER_TOPIC, self.dead_letter_topic.to_owned()),
        ]
    }
}

/// `text` cut to at most `max` bytes without splitting a character.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let cut = truncate(&text, MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(cut.len(), MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(truncate("ab€", 4), "ab");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn dead_letter_headers_carry_the_context() {
        let letter = DeadLetter {
            original_topic: "diet.commands",
            original_partition: 2,
            original_offset: 41,
            original_timestamp_ms: None,
            error_class: "bad_magic",
            error_message: "first byte is 7",
            processor: "commands",
            dead_letter_topic: "diet.dlq.commands",
            retry_count: 0,
            max_retries: 5,
            failed_at_ms: 1_700_000_000_000,
        };
        let headers = letter.headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(DLQ_ORIGINAL_PARTITION), Some("2"));
        assert_eq!(get(DLQ_ORIGINAL_OFFSET), Some("41"));
        assert_eq!(get(DLQ_ORIGINAL_TIMESTAMP), Some(""));
        assert_eq!(get(DLQ_ERROR_CLASS), Some("bad_magic"));
        assert_eq!(get(MAX_RETRIES), Some("5"));
        assert_eq!(headers.len(), 11);
    }
}
