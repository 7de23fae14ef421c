//! Dead letters (DESIGN decision 6, schemas/README.md "Kafka headers: retries and dead
//! letters"): a record a processor cannot read or apply is copied byte for byte to its dead-letter
//! topic, with the headers of [`dietstream_schemas::headers::DeadLetter`] added to its own.

use dietstream_schemas::codec::CodecError;
use dietstream_schemas::headers::DeadLetter;

/// Why a record is dead-lettered: a bounded class (the `error_code` metric label) and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Bounded error code, e.g. `bad_magic`, `unknown_schema_id`, `key_mismatch`.
    pub class: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl Rejection {
    /// The rejection for a permanent codec error.
    pub fn from_codec(error: &CodecError) -> Rejection {
        let class = match error {
            CodecError::BadMagic { .. } => "bad_magic",
            CodecError::TooShort { .. } => "truncated",
            CodecError::UnknownSchemaId { .. } => "unknown_schema_id",
            CodecError::UnexpectedType { .. } => "unexpected_type",
            CodecError::BadBody { .. } => "invalid_payload",
            CodecError::Encode { .. } => "encode_failed",
            CodecError::Registry(_) => "registry_error",
        };
        Rejection {
            class,
            message: error.to_string(),
        }
    }
}

/// The headers of the dead-letter copy: the original headers, then the dead-letter ones. A
/// record that was already a dead letter (re-driven, failed again) loses its old dead-letter
/// values, so each header appears once and says what happened last.
pub fn dead_letter_headers(
    original: &[(String, Option<Vec<u8>>)],
    letter: &DeadLetter<'_>,
) -> Vec<(String, Option<Vec<u8>>)> {
    let added = letter.headers();
    let mut headers: Vec<(String, Option<Vec<u8>>)> = original
        .iter()
        .filter(|(name, _)| !added.iter().any(|(added, _)| added == name))
        .cloned()
        .collect();
    headers.extend(
        added
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Some(value.into_bytes()))),
    );
    headers
}
