//! Decoders that read a record's fields in the order of this build's own schema, generated
//! from the `.avsc` files by the build script.
//!
//! When a record's writer schema has the same Parsing Canonical Form as this build's schema of
//! that record, the body holds exactly the fields of the generated type, in order: there is
//! nothing to resolve. The codec then decodes with these readers instead of serde, which saves
//! matching every field name and dispatching every value through a visitor. Any other writer
//! (an older or newer schema) is decoded by `serde_avro_fast` with schema resolution, as
//! before. Both paths give the same value for the same bytes, and fail on the same bytes: the
//! tests compare them on random bodies of every record.
//!
//! Every read checks its bounds, and a length is never trusted for an allocation beyond the
//! bytes that remain, so garbage gives an error, never a panic or a huge allocation.

use std::collections::HashMap;

/// Why a body could not be read positionally. Permanent: the same bytes fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionalError {
    /// The body ends inside a value.
    #[error("the body ends inside a {0}")]
    Truncated(&'static str),
    /// A variable-length integer runs past ten bytes or past 64 bits.
    #[error("a variable-length integer is longer than ten bytes or 64 bits")]
    Varint,
    /// An `int` outside the 32-bit range.
    #[error("int {0} is out of range")]
    IntRange(i64),
    /// A negative length of a string or bytes.
    #[error("negative length {0}")]
    Length(i64),
    /// A union branch or enum index outside the schema's.
    #[error("index {index} is not one of the {count} branches or symbols")]
    Branch {
        /// The index found.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// A boolean byte other than 0 or 1.
    #[error("boolean byte {0} is neither 0 nor 1")]
    Boolean(u8),
    /// A string that is not UTF-8.
    #[error("a string is not UTF-8")]
    Utf8,
    /// A `uuid` string that is not a UUID.
    #[error("invalid UUID {0:?}")]
    Uuid(String),
}

/// A generated decoder: reads one value of `Self`.
pub trait Positional: Sized {
    /// Reads one value from `r`.
    fn read(r: &mut Reader<'_>) -> Result<Self, PositionalError>;
}

/// A top-level record's decoder, as [`crate::codec::Record::POSITIONAL`] names it.
pub type ReadFn<T> = fn(&[u8]) -> Result<T, PositionalError>;

/// Decodes a body as one `T`. Bytes after the record are ignored, as `serde_avro_fast`
/// ignores them.
pub fn decode<T: Positional>(body: &[u8]) -> Result<T, PositionalError> {
    T::read(&mut Reader { bytes: body })
}

/// The bytes not read yet.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], PositionalError> {
        if len > self.bytes.len() {
            return Err(PositionalError::Truncated(what));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    /// A zig-zag variable-length `long`. Its tenth byte, if it has one, holds the 64th bit
    /// alone: anything above 1 there overflows and is an error, as in `serde_avro_fast`.
    pub fn long(&mut self) -> Result<i64, PositionalError> {
        let mut value: u64 = 0;
        for (index, byte) in self.bytes.iter().take(10).enumerate() {
            if index == 9 && *byte > 1 {
                return Err(PositionalError::Varint);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[index + 1..];
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(if self.bytes.len() >= 10 {
            PositionalError::Varint
        } else {
            PositionalError::Truncated("long")
        })
    }

    /// An `int`: a `long` in the 32-bit range.
    pub fn int(&mut self) -> Result<i32, PositionalError> {
        let value = self.long()?;
        i32::try_from(value).map_err(|_| PositionalError::IntRange(value))
    }

    /// A union branch or an enum index below `count`.
    pub fn branch(&mut self, count: usize) -> Result<usize, PositionalError> {
        let index = self.long()?;
        match usize::try_from(index) {
            Ok(index) if index < count => Ok(index),
            _ => Err(PositionalError::Branch {
                index: usize::try_from(index).unwrap_or(usize::MAX),
                count,
            }),
        }
    }

    /// A `boolean`.
    pub fn boolean(&mut self) -> Result<bool, PositionalError> {
        match self.take(1, "boolean")? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other, ..] => Err(PositionalError::Boolean(*other)),
            [] => Err(PositionalError::Truncated("boolean")),
        }
    }

    /// A little-endian `float`.
    pub fn float(&mut self) -> Result<f32, PositionalError> {
        let bytes = self.take(4, "float")?;
        Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A little-endian `double`.
    pub fn double(&mut self) -> Result<f64, PositionalError> {
        let bytes = self.take(8, "double")?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(array))
    }

    fn length_delimited(&mut self, what: &'static str) -> Result<&'a [u8], PositionalError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| PositionalError::Length(len))?;
        self.take(len, what)
    }

    /// `bytes`.
    pub fn bytes(&mut self) -> Result<Vec<u8>, PositionalError> {
        Ok(self.length_delimited("bytes")?.to_vec())
    }

    fn str(&mut self) -> Result<&'a str, PositionalError> {
        std::str::from_utf8(self.length_delimited("string")?).map_err(|_| PositionalError::Utf8)
    }

    /// A `string`.
    pub fn string(&mut self) -> Result<String, PositionalError> {
        self.str().map(str::to_owned)
    }

    /// A `string` of logical type `uuid`, in any form `Uuid::parse_str` takes (as serde's).
    /// Parsed from the bytes (`try_parse_ascii`, the parser `parse_str` runs on a string's
    /// bytes): a UUID is ASCII, so checking the bytes as UTF-8 first would only repeat the
    /// parser's own check.
    pub fn uuid(&mut self) -> Result<apache_avro::Uuid, PositionalError> {
        let bytes = self.length_delimited("string")?;
        apache_avro::Uuid::try_parse_ascii(bytes)
            .map_err(|_| PositionalError::Uuid(String::from_utf8_lossy(bytes).into_owned()))
    }

    /// Reads the blocks of an array or map into `into`: `reserve` makes room for a block's
    /// items, then `each` reads one. A negative count is followed by the block's size in
    /// bytes, which is read and not needed. Room is never made for more items than bytes
    /// remain (every item takes at least one byte), so a forged count allocates nothing large.
    fn blocks<C>(
        &mut self,
        mut into: C,
        reserve: fn(&mut C, usize),
        mut each: impl FnMut(&mut Self, &mut C) -> Result<(), PositionalError>,
    ) -> Result<C, PositionalError> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(into);
            }
            if count < 0 {
                self.long()?;
            }
            let count = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
            reserve(&mut into, count.min(self.bytes.len()));
            for _ in 0..count {
                each(self, &mut into)?;
            }
        }
    }

    /// An `array` whose items `item` reads.
    pub fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, PositionalError>,
    ) -> Result<Vec<T>, PositionalError> {
        self.blocks(Vec::new(), Vec::reserve, |r, items| {
            items.push(item(r)?);
            Ok(())
        })
    }

    /// A `map` whose values `value` reads.
    pub fn map<T>(
        &mut self,
        mut value: impl FnMut(&mut Self) -> Result<T, PositionalError>,
    ) -> Result<HashMap<String, T>, PositionalError> {
        self.blocks(HashMap::new(), HashMap::reserve, |r, entries| {
            let key = r.string()?;
            entries.insert(key, value(r)?);
            Ok(())
        })
    }
}

/// One [`Positional`] impl per record and enum the build script could generate a reader for.
#[allow(clippy::needless_question_mark)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/positional.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn long(bytes: &[u8]) -> Result<i64, PositionalError> {
        Reader { bytes }.long()
    }

    #[test]
    fn a_long_takes_at_most_ten_bytes_and_64_bits() {
        assert_eq!(long(&[0x02]), Ok(1));
        assert_eq!(long(&[0x03]), Ok(-2));
        let mut max = vec![0xfe];
        max.extend([0xff; 8]);
        max.push(0x01);
        assert_eq!(long(&max), Ok(i64::MAX));
        let mut overflow = vec![0x80; 9];
        overflow.push(0x02);
        assert_eq!(long(&overflow), Err(PositionalError::Varint));
        assert_eq!(long(&[0x80; 11]), Err(PositionalError::Varint));
        assert_eq!(long(&[0x80; 3]), Err(PositionalError::Truncated("long")));
    }

    /// Bytes for the primitive readers: arbitrary ones, runs of continuation bytes, and the
    /// encodings of values at the edges of `int` and `long`, so that a boolean byte above 1, a
    /// tenth varint byte above 1 and an int just out of range come up in every run.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        const EDGES: [i64; 8] = [
            i32::MAX as i64,
            i32::MAX as i64 + 1,
            i32::MIN as i64,
            i32::MIN as i64 - 1,
            i64::MAX,
            i64::MIN,
            -1,
            3,
        ];
        let piece = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            Just(vec![0x80; 9]),
            prop::sample::select(EDGES.to_vec()).prop_map(|value| {
                let mut v = ((value << 1) ^ (value >> 63)) as u64;
                let mut out = Vec::new();
                while v >= 0x80 {
                    out.push((v as u8) | 0x80);
                    v >>= 7;
                }
                out.push(v as u8);
                out
            }),
        ];
        prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
    }

    /// `read` against `serde_avro_fast` with the one-type `schema` on the same bytes: the same
    /// value (compared by `key`), or both fail.
    fn agree<T: serde::de::DeserializeOwned + std::fmt::Debug, K: PartialEq + std::fmt::Debug>(
        schema: &str,
        bytes: &[u8],
        read: fn(&mut Reader<'_>) -> Result<T, PositionalError>,
        key: fn(&T) -> K,
    ) -> Result<(), TestCaseError> {
        let parsed: serde_avro_fast::Schema = schema.parse().expect("a schema");
        let serde = serde_avro_fast::from_datum_slice::<T>(bytes, &parsed);
        let positional = read(&mut Reader { bytes });
        prop_assert_eq!(
            positional.as_ref().ok().map(key),
            serde.as_ref().ok().map(key),
            "{} on {:?}: positional {:?}, serde {:?}",
            schema,
            bytes,
            positional,
            serde
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Each primitive reader decodes as `serde_avro_fast` does, on any bytes.
        #[test]
        fn each_reader_agrees_with_serde(bytes in bytes()) {
            agree("\"boolean\"", &bytes, |r| r.boolean(), |v| *v)?;
            agree("\"int\"", &bytes, |r| r.int(), |v| *v)?;
            agree("\"long\"", &bytes, |r| r.long(), |v| *v)?;
            agree("\"float\"", &bytes, |r| r.float(), |v| v.to_bits())?;
            agree("\"double\"", &bytes, |r| r.double(), |v| v.to_bits())?;
            agree("\"string\"", &bytes, |r| r.string(), Clone::clone)?;
            let uuid = r#"{"type": "string", "logicalType": "uuid"}"#;
            agree(uuid, &bytes, |r| r.uuid(), |v| *v)?;
        }
    }
}
