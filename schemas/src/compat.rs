//! Registry-free compatibility checks with the rules the registry enforces, so a breaking
//! schema change fails the unit tests before it reaches any registry.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

/// Why a new schema cannot replace the old ones.
#[derive(Debug, thiserror::Error)]
#[error("the new schema cannot read data written with version {version}: {reason}")]
pub struct Incompatible {
    /// 1-based position of the old schema that the new one cannot read.
    pub version: usize,
    /// What apache-avro found.
    pub reason: String,
}

/// BACKWARD_TRANSITIVE: a reader with `new` can read what every one of `previous` wrote.
pub fn check_backward_transitive(previous: &[Schema], new: &Schema) -> Result<(), Incompatible> {
    for (index, old) in previous.iter().enumerate() {
        SchemaCompatibility::can_read(old, new).map_err(|e| Incompatible {
            version: index + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}
