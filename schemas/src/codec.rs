//! The one codec of dietstream: Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, Avro body), subjects by TopicRecordNameStrategy (`<topic>-<record full name>`), writer
//! schemas fetched by id and cached, bodies decoded straight into the generated types.
//!
//! A body whose writer schema is this build's own (the same Parsing Canonical Form) is read
//! field by field in schema order ([`crate::positional`]). Any other writer's goes through
//! `serde_avro_fast` with the writer's schema: fields the writer lacks take the defaults the
//! generated types carry from the reader schema, fields the reader lacks are skipped, so older
//! and newer writers decode alike. Errors say whether a retry can help: only a registry that
//! does not answer is retryable.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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
    /// The generated decoder that reads the fields in this build's order
    /// ([`crate::positional`]); `None` for a record it cannot read (a union of records).
    const POSITIONAL: Option<crate::positional::ReadFn<Self>> = None;
}

/// The Kafka header that carries [`Record::RECORD_TYPE`] on every dietstream record.
pub const RECORD_TYPE_HEADER: &str = "event_type";

include!(concat!(env!("OUT_DIR"), "/records.rs"));

/// Decodes a body as the named record when the name is one of `T`'s variants.
type DecodeAs<T> = fn(&[u8], &Writer) -> Option<Result<T, String>>;

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
pub(crate) struct Writer {
    full_name: String,
    schema: serde_avro_fast::Schema,
    /// The schema has the Parsing Canonical Form of this build's schema of `full_name`: the
    /// body is read positionally ([`crate::positional`]) when the type has a reader.
    same_as_local: bool,
    /// The record's place in [`Event::FULL_NAMES`], if it is an event: the variant to decode
    /// into, found once per writer rather than by name per record.
    pub(crate) event_index: Option<usize>,
    /// Its place in [`Command::FULL_NAMES`], if it is a command.
    pub(crate) command_index: Option<usize>,
}

impl Writer {
    /// The writer schema `text` of the record `full_name`; `local` is this build's schema of
    /// that record, if it knows one.
    pub(crate) fn new(
        full_name: String,
        text: &str,
        local: Option<&str>,
    ) -> Result<Writer, String> {
        let schema = parse(text)?;
        let same_as_local =
            local.is_some_and(|local| canonical_form(text).is_ok_and(|c| c == local));
        let index = |names: &[&str]| names.iter().position(|name| *name == full_name);
        Ok(Writer {
            event_index: index(Event::FULL_NAMES),
            command_index: index(Command::FULL_NAMES),
            full_name,
            schema,
            same_as_local,
        })
    }

    /// Decodes a body this schema wrote as a `T` (whose full name the caller has checked).
    pub(crate) fn decode<T: Record>(&self, body: &[u8]) -> Result<T, String> {
        match T::POSITIONAL {
            Some(read) if self.same_as_local => read(body).map_err(|e| e.to_string()),
            _ => serde_avro_fast::from_datum_slice(body, &self.schema).map_err(|e| e.to_string()),
        }
    }
}

/// A record type's own schema, as this build knows it.
struct LocalSchema {
    text: String,
    schema: serde_avro_fast::Schema,
    /// Its Parsing Canonical Form.
    canonical: String,
}

/// The Parsing Canonical Form of a schema: what decides the binary layout of its values.
pub(crate) fn canonical_form(text: &str) -> Result<String, String> {
    apache_avro::Schema::parse_str(text)
        .map(|schema| schema.canonical_form())
        .map_err(|e| e.to_string())
}

/// Hashes the schema ids of the writer cache, looked up once per decoded record: ids are small
/// integers, which a multiplication spreads at a fraction of SipHash's cost. Only ids the
/// registry resolved are ever inserted, so flooding the map with chosen keys is not possible.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Encodes and decodes records through a schema registry.
pub struct Codec<R> {
    registry: R,
    local: HashMap<String, LocalSchema>,
    writers: RwLock<HashMap<u32, Arc<Writer>, BuildHasherDefault<IdHasher>>>,
    ids: RwLock<HashMap<String, u32>>,
}

impl<R: SchemaRegistry> Codec<R> {
    /// A codec for every top-level record of `catalog`.
    pub fn new(registry: R, catalog: &Catalog) -> Result<Codec<R>, CatalogError> {
        let mut local = HashMap::new();
        for record in catalog.top_level_records() {
            let text = catalog.expanded(&record.name)?;
            let codec_error = |reason| CatalogError::Codec {
                name: record.name.clone(),
                reason,
            };
            let schema = parse(&text).map_err(codec_error)?;
            let canonical = canonical_form(&text).map_err(codec_error)?;
            local.insert(
                record.name,
                LocalSchema {
                    text,
                    schema,
                    canonical,
                },
            );
        }
        Ok(Codec {
            registry,
            local,
            writers: RwLock::new(HashMap::default()),
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
        writer.decode(body).map_err(|reason| CodecError::BadBody {
            record: writer.full_name.clone(),
            id,
            reason,
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
        let decode = |writer: &Writer| match decode_as(body, writer) {
            None => Err(CodecError::UnexpectedType {
                expected,
                found: writer.full_name.clone(),
            }),
            Some(decoded) => decoded.map_err(|reason| CodecError::BadBody {
                record: writer.full_name.clone(),
                id,
                reason,
            }),
        };
        // The hot path: a known writer, decoded under the read lock without touching its
        // reference count.
        if let Some(decoded) = read(&self.writers).get(&id).map(|w| decode(w)) {
            return decoded;
        }
        decode(&*self.writer(id).await?)
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

    async fn writer(&self, id: u32) -> Result<Arc<Writer>, CodecError> {
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
        let local = self.local.get(&full_name).map(|l| l.canonical.as_str());
        let writer = Arc::new(Writer::new(full_name, &text, local).map_err(bad)?);
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
