//! Avro binary bodies (no container, no wire-format header) to and from the generated types,
//! through apache-avro: the reference path the unit tests check the schemas with. Production
//! code encodes and decodes with [`crate::codec`].
//!
//! Serde goes straight between the Rust value and the bytes, guided by the schema, with the
//! human-readable representation on: logical `uuid` fields are Avro strings, which is how
//! `uuid::Uuid` serializes only in human-readable mode.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that does not fit its schema, or bytes that do not match the writer's schema.
/// Permanent: the same input fails the same way every time.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DatumError(#[from] Box<apache_avro::Error>);

impl From<apache_avro::Error> for DatumError {
    fn from(error: apache_avro::Error) -> Self {
        DatumError(Box::new(error))
    }
}

/// Encodes `value` as an Avro binary body with `schema`.
pub(crate) fn encode<T: Serialize>(schema: &Schema, value: &T) -> Result<Vec<u8>, DatumError> {
    let writer = GenericDatumWriter::builder(schema)
        .human_readable(true)
        .build()?;
    Ok(writer.write_ser_to_vec(value)?)
}

/// Decodes a body written with `writer`, resolved to `reader` (Avro schema resolution: fields
/// the writer lacks take the reader's defaults, fields the reader lacks are skipped).
pub(crate) fn decode<T: DeserializeOwned>(
    writer: &Schema,
    reader: &Schema,
    mut bytes: &[u8],
) -> Result<T, DatumError> {
    // Decoding to a `Value` first: apache-avro's direct serde path does not resolve a writer
    // schema against a reader schema (it panics when asked to).
    let datum_reader = GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .human_readable(true)
        .build()?;
    let value = datum_reader.read_value(&mut bytes)?;
    Ok(apache_avro::from_value(&value)?)
}
