//! The one codec of dietstream: Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, Avro body), subjects by TopicRecordNameStrategy (`<topic>-<record full name>`), writer
//! schemas fetched by id and cached, bodies decoded straight into the generated types.
//!
//! Decoding goes through `serde_avro_fast` with the writer's schema: fields the writer lacks
//! take the defaults the generated types carry from the reader schema, fields the reader lacks
//! are skipped, so older and newer writers decode alike. Errors say whether a retry can help:
//! only a registry that does not answer is retryable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError};
use crate::envelope::{Command, Event};
use crate::registry::{RegistryError, SchemaRegistry};
use crate::types::{CommandHeader, EventHeader};

/// A record written to a topic on its own; implemented for the generated top-level types.
pub trait Record: Serialize + DeserializeOwned {
    /// The record's full Avro name, e.g. `dietstream.events.nutrition.MealLogged`.
    const FULL_NAME: &'static str;
    /// The dotted record type (`nutrition.meal.logged`, `nutrition.meal.log`,
    /// `command.result`): the value of the [`RECORD_TYPE_HEADER`] Kafka header, so that a
    /// processor can skip records it does not need without decoding them.
    const RECORD_TYPE: &'static str;
}

/// The Kafka header that carries [`Record::RECORD_TYPE`] on every dietstream record.
pub const RECORD_TYPE_HEADER: &str = "event_type";

include!(concat!(env!("OUT_DIR"), "/records.rs"));

/// Decodes a body as the named record when the name is one of `T`'s variants.
type DecodeAs<T> =
    fn(&str, &[u8], &serde_avro_fast::Schema) -> Option<Result<T, serde_avro_fast::de::DeError>>;

/// The magic byte that starts every Confluent wire-format record.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record does not start with magic byte 0: not the Confluent wire format. Permanent.
    #[error("not the Confluent wire format: first byte is {found}, expected 0")]
    BadMagic {
        /// The first byte found.
        found: u8,
    },
    /// The record is shorter than the wire-format header. Permanent.
    #[error("record of {len} bytes is shorter than the 5-byte wire-format header")]
    TooShort {
        /// The record's length.
        len: usize,
    },
    /// The registry does not know the schema id. Permanent.
    #[error("unknown schema id {id}")]
    UnknownSchemaId {
        /// The id in the record.
        id: u32,
    },
    /// The record holds another type than the one asked for. Permanent.
    #[error("expected {expected} but the record was written as {found}")]
    UnexpectedType {
        /// The type asked for.
        expected: &'static str,
        /// The writer schema's full name.
        found: String,
    },
    /// The body does not match the writer schema (or the registry served a schema that is not
    /// valid Avro). Permanent.
    #[error("cannot decode {record} with writer schema {id}: {reason}")]
    BadBody {
        /// The writer schema's full name.
        record: String,
        /// The writer schema id.
        id: u32,
        /// What the decoder said.
        reason: String,
    },
    /// The value does not fit its own schema: a bug in the caller. Permanent.
    #[error("cannot encode {record}: {reason}")]
    Encode {
        /// The record's full name.
        record: &'static str,
        /// What the encoder said.
        reason: String,
    },
    /// The registry failed; retryable when it did not answer.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl CodecError {
    /// True when the same call may succeed later (the registry did not answer).
    pub fn is_retryable(&self) -> bool {
        matches!(self, CodecError::Registry(e) if e.is_retryable())
    }
}

/// A writer schema as fetched from the registry.
struct WriterSchema {
    full_name: String,
    schema: serde_avro_fast::Schema,
}

/// A record type's own schema, as this build knows it.
struct LocalSchema {
    text: String,
    schema: serde_avro_fast::Schema,
}

/// Encodes and decodes records through a schema registry.
pub struct Codec<R> {
    registry: R,
    local: HashMap<String, LocalSchema>,
    writers: RwLock<HashMap<u32, Arc<WriterSchema>>>,
    ids: RwLock<HashMap<String, u32>>,
}

impl<R: SchemaRegistry> Codec<R> {
    /// A codec for every top-level record of `catalog`.
    pub fn new(registry: R, catalog: &Catalog) -> Result<Codec<R>, CatalogError> {
        let mut local = HashMap::new();
        for record in catalog.top_level_records() {
            let text = catalog.expanded(&record.name)?;
            let schema = parse(&text).map_err(|reason| CatalogError::Codec {
                name: record.name.clone(),
                reason,
            })?;
            local.insert(record.name, LocalSchema { text, schema });
        }
        Ok(Codec {
            registry,
            local,
            writers: RwLock::new(HashMap::new()),
            ids: RwLock::new(HashMap::new()),
        })
    }

    /// The registry this codec talks to.
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// The subject of `T` on `topic` (TopicRecordNameStrategy).
    pub fn subject<T: Record>(topic: &str) -> String {
        format!("{topic}-{}", T::FULL_NAME)
    }

    /// Encodes `record` for `topic`: registers its schema under the subject on first use (an
    /// identical schema keeps its id), then writes header and body.
    pub async fn encode<T: Record>(&self, topic: &str, record: &T) -> Result<Vec<u8>, CodecError> {
        let local = self.local_schema::<T>()?;
        let id = self.schema_id::<T>(topic, &local.text).await?;
        let mut bytes = Vec::with_capacity(64);
        bytes.push(MAGIC_BYTE);
        bytes.extend_from_slice(&id.to_be_bytes());
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&local.schema);
        serde_avro_fast::to_datum(record, bytes, &mut config).map_err(|e| CodecError::Encode {
            record: T::FULL_NAME,
            reason: e.to_string(),
        })
    }

    /// Decodes a record that must be a `T`.
    pub async fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (id, body) = split_header(bytes)?;
        let writer = self.writer(id).await?;
        if writer.full_name != T::FULL_NAME {
            return Err(CodecError::UnexpectedType {
                expected: T::FULL_NAME,
                found: writer.full_name.clone(),
            });
        }
        serde_avro_fast::from_datum_slice(body, &writer.schema).map_err(|e| CodecError::BadBody {
            record: writer.full_name.clone(),
            id,
            reason: e.to_string(),
        })
    }

    /// Decodes any event record: the writer schema's name picks the [`Event`] variant.
    pub async fn decode_event(&self, bytes: &[u8]) -> Result<Event, CodecError> {
        self.decode_any(bytes, "an event record", Event::decode_as)
            .await
    }

    /// Decodes any command record: the writer schema's name picks the [`Command`] variant.
    pub async fn decode_command(&self, bytes: &[u8]) -> Result<Command, CodecError> {
        self.decode_any(bytes, "a command record", Command::decode_as)
            .await
    }

    /// Decodes only the [`EventHeader`] of any event record (the first field of every event),
    /// without the payload: for code that indexes or routes events of every type.
    pub async fn decode_event_header(&self, bytes: &[u8]) -> Result<EventHeader, CodecError> {
        #[derive(serde::Deserialize)]
        struct HeaderOnly {
            header: EventHeader,
        }
        let (id, body) = split_header(bytes)?;
        let writer = self.writer(id).await?;
        if !Event::FULL_NAMES.contains(&writer.full_name.as_str()) {
            return Err(CodecError::UnexpectedType {
                expected: "an event record",
                found: writer.full_name.clone(),
            });
        }
        serde_avro_fast::from_datum_slice::<HeaderOnly>(body, &writer.schema)
            .map(|h| h.header)
            .map_err(|e| CodecError::BadBody {
                record: writer.full_name.clone(),
                id,
                reason: e.to_string(),
            })
    }

    /// Decodes only the [`CommandHeader`] of any record whose first field is a command header,
    /// including command types this build does not know (a newer sender's): the command
    /// processor still answers those, with an `UNKNOWN_COMMAND` rejection.
    pub async fn decode_command_header(&self, bytes: &[u8]) -> Result<CommandHeader, CodecError> {
        #[derive(serde::Deserialize)]
        struct HeaderOnly {
            header: CommandHeader,
        }
        let (id, body) = split_header(bytes)?;
        let writer = self.writer(id).await?;
        serde_avro_fast::from_datum_slice::<HeaderOnly>(body, &writer.schema)
            .map(|h| h.header)
            .map_err(|e| CodecError::BadBody {
                record: writer.full_name.clone(),
                id,
                reason: e.to_string(),
            })
    }

    async fn decode_any<T>(
        &self,
        bytes: &[u8],
        expected: &'static str,
        decode_as: DecodeAs<T>,
    ) -> Result<T, CodecError> {
        let (id, body) = split_header(bytes)?;
        let writer = self.writer(id).await?;
        match decode_as(&writer.full_name, body, &writer.schema) {
            None => Err(CodecError::UnexpectedType {
                expected,
                found: writer.full_name.clone(),
            }),
            Some(decoded) => decoded.map_err(|e| CodecError::BadBody {
                record: writer.full_name.clone(),
                id,
                reason: e.to_string(),
            }),
        }
    }

    /// The full name of the record's writer schema, to choose the type to decode into.
    pub async fn record_name(&self, bytes: &[u8]) -> Result<String, CodecError> {
        let (id, _) = split_header(bytes)?;
        Ok(self.writer(id).await?.full_name.clone())
    }

    fn local_schema<T: Record>(&self) -> Result<&LocalSchema, CodecError> {
        self.local.get(T::FULL_NAME).ok_or(CodecError::Encode {
            record: T::FULL_NAME,
            reason: "not a top-level record of the catalog".to_owned(),
        })
    }

    async fn schema_id<T: Record>(&self, topic: &str, text: &str) -> Result<u32, CodecError> {
        let subject = Self::subject::<T>(topic);
        if let Some(id) = read(&self.ids).get(&subject) {
            return Ok(*id);
        }
        let id = self.registry.register(&subject, text).await?;
        write(&self.ids).insert(subject, id);
        Ok(id)
    }

    async fn writer(&self, id: u32) -> Result<Arc<WriterSchema>, CodecError> {
        if let Some(writer) = read(&self.writers).get(&id) {
            return Ok(Arc::clone(writer));
        }
        let text = match self.registry.schema_by_id(id).await {
            Ok(text) => text,
            Err(RegistryError::NotFound { .. }) => return Err(CodecError::UnknownSchemaId { id }),
            Err(e) => return Err(e.into()),
        };
        let bad = |reason: String| CodecError::BadBody {
            record: "<unparsable writer schema>".to_owned(),
            id,
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let full_name = crate::catalog::defined_name(&json)
            .ok_or_else(|| bad("writer schema is not a named record".to_owned()))?;
        let schema = parse(&text).map_err(bad)?;
        let writer = Arc::new(WriterSchema { full_name, schema });
        write(&self.writers).insert(id, Arc::clone(&writer));
        Ok(writer)
    }
}

/// Schema id and body of a wire-format record.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [MAGIC_BYTE, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [other, ..] if *other != MAGIC_BYTE => Err(CodecError::BadMagic { found: *other }),
        _ => Err(CodecError::TooShort { len: bytes.len() }),
    }
}

fn parse(text: &str) -> Result<serde_avro_fast::Schema, String> {
    text.parse::<serde_avro_fast::Schema>()
        .map_err(|e| e.to_string())
}

/// A poisoned lock only means another thread panicked mid-insert into a cache; the map is
/// still a valid cache.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_split_or_rejected() {
        assert_eq!(
            split_header(&[0, 0, 0, 1, 2, 9, 9]).expect("valid"),
            (258, &[9u8, 9][..])
        );
        assert!(matches!(
            split_header(&[1, 0, 0, 0, 1]),
            Err(CodecError::BadMagic { found: 1 })
        ));
        assert!(matches!(
            split_header(&[0, 0, 0]),
            Err(CodecError::TooShort { len: 3 })
        ));
        assert!(matches!(
            split_header(&[]),
            Err(CodecError::TooShort { len: 0 })
        ));
    }
}
