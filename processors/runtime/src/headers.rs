//! A record's headers, read without panicking.
//!
//! rust-rdkafka's header accessors (`Headers::try_get`, `iter`, `get_as`) unwrap the header
//! name as UTF-8, so a record whose producer wrote a name that is not UTF-8 (Kafka allows any
//! bytes; no common client writes them, a hand-made one can) would panic whatever reads it.
//! [`read`] reads each header on its own and keeps those it can, [`find`] looks for one name
//! the same way; the caller decides what an unreadable one means (the consume loop passes over
//! it, as it needs only `event_type`; a dead letter leaves it out).

use std::panic::{catch_unwind, AssertUnwindSafe};

use rdkafka::message::{Header, Headers};

/// The headers of a record that could be read, in order, and how many could not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadHeaders<'m> {
    /// Name and value (`None`: a null value) of each readable header.
    pub readable: Vec<(&'m str, Option<&'m [u8]>)>,
    /// Headers whose name is not UTF-8.
    pub unreadable: usize,
}

impl<'m> ReadHeaders<'m> {
    /// The value of the first readable header named `name`, if it has one.
    pub fn value(&self, name: &str) -> Option<&'m [u8]> {
        self.readable
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }

    /// Owned copies of the readable headers, as a dead letter carries them.
    pub fn to_owned_pairs(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.readable
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.map(<[u8]>::to_vec)))
            .collect()
    }

    /// What is wrong with them, for a dead letter's message: `None` when all were read.
    pub fn problem(&self) -> Option<String> {
        (self.unreadable > 0).then(|| {
            format!(
                "{} of {} headers have a name that is not UTF-8 (left out of this letter)",
                self.unreadable,
                self.unreadable + self.readable.len()
            )
        })
    }
}

/// Reads `headers` (`None`: the record has none) one at a time.
pub fn read<H: Headers + ?Sized>(headers: Option<&H>) -> ReadHeaders<'_> {
    let mut read = ReadHeaders::default();
    let Some(headers) = headers else {
        return read;
    };
    for index in 0..headers.count() {
        match get(headers, index) {
            Ok(Some(header)) => read.readable.push((header.key, header.value)),
            Ok(None) => {}
            Err(Unreadable) => read.unreadable += 1,
        }
    }
    read
}

/// A header whose name is not UTF-8.
struct Unreadable;

/// The header at `index`, or [`Unreadable`] where rust-rdkafka panics on its name.
fn get<H: Headers + ?Sized>(
    headers: &H,
    index: usize,
) -> Result<Option<Header<'_, &[u8]>>, Unreadable> {
    // The panic is rust-rdkafka's `CStr::to_str().unwrap()` on the name: nothing is left
    // half-changed by it, so unwinding past it is sound.
    catch_unwind(AssertUnwindSafe(|| headers.try_get(index))).map_err(|_| Unreadable)
}

/// The value of the first header named `name` (`None`: no such header, or a null value),
/// passing over headers that cannot be read (whose name is not UTF-8, so not `name` either).
/// Allocates nothing: the consume loop calls it for every record.
pub fn find<'h, H: Headers + ?Sized>(headers: Option<&'h H>, name: &str) -> Option<&'h [u8]> {
    let headers = headers?;
    (0..headers.count())
        .find_map(|index| match get(headers, index) {
            Ok(Some(header)) if header.key == name => Some(header.value),
            _ => None,
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::OwnedHeaders;

    use super::*;

    #[test]
    fn every_header_of_a_well_formed_record_is_read_in_order() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_type",
                value: Some("user.registered"),
            })
            .insert(Header::<&str> {
                key: "empty",
                value: None,
            })
            .insert(Header {
                key: "event_type",
                value: Some("second"),
            });
        let read = read(Some(&headers));
        assert_eq!(read.unreadable, 0);
        assert_eq!(read.problem(), None);
        assert_eq!(
            read.readable,
            [
                ("event_type", Some(&b"user.registered"[..])),
                ("empty", None),
                ("event_type", Some(&b"second"[..])),
            ]
        );
        assert_eq!(read.value("event_type"), Some(&b"user.registered"[..]));
        assert_eq!(read.value("empty"), None);
        assert_eq!(read.value("absent"), None);
        assert_eq!(
            find(Some(&headers), "event_type"),
            Some(&b"user.registered"[..])
        );
        assert_eq!(find(Some(&headers), "empty"), None);
        assert_eq!(find(Some(&headers), "absent"), None);
        assert_eq!(find::<OwnedHeaders>(None, "event_type"), None);
    }

    #[test]
    fn no_headers_read_as_none() {
        assert_eq!(read::<OwnedHeaders>(None), ReadHeaders::default());
    }
}
