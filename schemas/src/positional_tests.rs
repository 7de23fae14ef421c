//! The positional decoders against `serde_avro_fast`: random bodies of every event and command
//! record (valid ones, ones that break the schema on purpose, damaged ones) decode to the same
//! value on both paths or fail on both.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::codec::{canonical_form, Writer};
use crate::envelope::{Command, Event};

/// Random choices from proptest's bytes; zeros once they run out, so every walk ends.
struct Entropy<'a>(std::slice::Iter<'a, u8>);

impl Entropy<'_> {
    fn byte(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }
}

/// Now and then (one value in 8) the writer breaks the schema on purpose: a boolean byte
/// other than 0 and 1, an int out of range, a long of ten bytes that may overflow or run on,
/// an enum index or union branch that does not exist.
fn wild(e: &mut Entropy<'_>) -> bool {
    e.byte() % 8 == 7
}

fn zigzag(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn length_delimited(out: &mut Vec<u8>, bytes: &[u8]) {
    zigzag(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// Writes a random value of `ty` as Avro binary: an encoder independent of both decoders,
/// which also writes the block forms (negative counts with sizes) writers may choose.
struct Writes<'a> {
    named: &'a HashMap<String, Value>,
}

impl Writes<'_> {
    fn value(&self, ty: &Value, e: &mut Entropy<'_>, out: &mut Vec<u8>) {
        match ty {
            Value::String(name) => self.primitive(name, e, out),
            Value::Array(branches) => {
                let branch = e.below(branches.len());
                if wild(e) {
                    zigzag(out, [-1, branches.len() as i64][e.below(2)]);
                }
                zigzag(out, branch as i64);
                self.value(&branches[branch], e, out);
            }
            Value::Object(object) => {
                let logical = object.get("logicalType").and_then(Value::as_str);
                match (object["type"].as_str(), logical) {
                    (Some("string"), Some("uuid")) => self.uuid(e, out),
                    (Some("record"), _) => {
                        for field in object["fields"].as_array().expect("fields") {
                            self.value(&field["type"], e, out);
                        }
                    }
                    (Some("enum"), _) => {
                        let symbols = object["symbols"].as_array().expect("symbols").len();
                        let index = if wild(e) { symbols } else { e.below(symbols) };
                        zigzag(out, index as i64);
                    }
                    (Some("array"), _) => self.blocks(e, out, |e, out| {
                        self.value(&object["items"], e, out);
                    }),
                    (Some("map"), _) => self.blocks(e, out, |e, out| {
                        let key = self.text(e);
                        length_delimited(out, key.as_bytes());
                        self.value(&object["values"], e, out);
                    }),
                    _ => self.value(&object["type"], e, out),
                }
            }
            other => panic!("not a schema: {other}"),
        }
    }

    fn primitive(&self, name: &str, e: &mut Entropy<'_>, out: &mut Vec<u8>) {
        match name {
            "null" => {}
            "boolean" if wild(e) => out.push(2 + e.byte() % 254),
            "boolean" => out.push(e.byte() & 1),
            "int" if wild(e) => zigzag(
                out,
                [i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1][e.below(2)],
            ),
            "int" => zigzag(out, i64::from(e.u64() as i32) >> e.below(32)),
            "long" if wild(e) => {
                // Ten bytes: the last holds the 64th bit alone, so above 1 it overflows, and
                // with its top bit set the integer runs on.
                out.extend([0x80 | e.byte(); 9]);
                out.push(e.byte());
            }
            "long" => zigzag(out, (e.u64() as i64) >> e.below(64)),
            "float" => out.extend_from_slice(&(f32::from(e.byte()) / 4.0).to_le_bytes()),
            "double" => {
                let value = f64::from_bits(e.u64());
                let value = if value.is_nan() { 0.25 } else { value };
                out.extend_from_slice(&value.to_le_bytes());
            }
            "string" => length_delimited(out, self.text(e).as_bytes()),
            "bytes" => {
                let bytes: Vec<u8> = (0..e.below(6)).map(|_| e.byte()).collect();
                length_delimited(out, &bytes);
            }
            named => {
                let def = self
                    .named
                    .get(named)
                    .unwrap_or_else(|| panic!("{named} is defined"));
                self.value(def, e, out);
            }
        }
    }

    fn text(&self, e: &mut Entropy<'_>) -> String {
        const PIECES: [&str; 6] = ["a", "Z", "0", "é", "水", "🍎"];
        (0..e.below(8))
            .map(|_| PIECES[e.below(PIECES.len())])
            .collect()
    }

    /// A UUID in one of the forms `Uuid::parse_str` takes, or now and then a string that is not
    /// one.
    fn uuid(&self, e: &mut Entropy<'_>, out: &mut Vec<u8>) {
        let uuid = apache_avro::Uuid::from_u64_pair(e.u64(), e.u64());
        let text = match e.below(6) {
            0 => uuid.simple().to_string(),
            1 => uuid.urn().to_string(),
            2 => uuid.braced().to_string(),
            3 => self.text(e),
            _ => uuid.hyphenated().to_string(),
        };
        length_delimited(out, text.as_bytes());
    }

    fn blocks(
        &self,
        e: &mut Entropy<'_>,
        out: &mut Vec<u8>,
        mut item: impl FnMut(&mut Entropy<'_>, &mut Vec<u8>),
    ) {
        for _ in 0..e.below(3) {
            let count = 1 + e.below(3);
            let mut block = Vec::new();
            for _ in 0..count {
                item(e, &mut block);
            }
            if e.byte() & 1 == 0 {
                zigzag(out, count as i64);
            } else {
                zigzag(out, -(count as i64));
                zigzag(out, block.len() as i64);
            }
            out.extend_from_slice(&block);
        }
        zigzag(out, 0);
    }
}

/// One top-level record: its schema and both writers.
struct Subject {
    name: &'static str,
    schema: Value,
    positional: Writer,
    resolving: Writer,
}

/// Every event and command record, and every named type of the catalog by full name (its
/// expanded, self-contained schema), which the writer looks names up in.
struct Contract {
    subjects: Vec<Subject>,
    named: HashMap<String, Value>,
}

fn contract() -> Contract {
    let catalog = Catalog::embedded().expect("catalog");
    let expanded = |name: &str| catalog.expanded(name).expect("expands");
    let named = catalog
        .names()
        .map(|name| {
            let schema = serde_json::from_str(&expanded(name)).expect("JSON");
            (name.to_owned(), schema)
        })
        .collect();
    let subjects = Event::FULL_NAMES
        .iter()
        .chain(Command::FULL_NAMES)
        .map(|name| {
            let text = expanded(name);
            let canonical = canonical_form(&text).expect("canonical form");
            Subject {
                name,
                schema: serde_json::from_str(&text).expect("JSON"),
                positional: Writer::new((*name).to_owned(), &text, Some(&canonical))
                    .expect("writer"),
                resolving: Writer::new((*name).to_owned(), &text, None).expect("writer"),
            }
        })
        .collect();
    Contract { subjects, named }
}

/// A decoded record of either envelope.
#[derive(Debug, PartialEq)]
enum Decoded {
    Event(Event),
    Command(Command),
}

/// Decodes `body` on both paths as whichever envelope holds the subject.
fn both(subject: &Subject, body: &[u8]) -> [Result<Decoded, String>; 2] {
    let decode = |writer: &Writer| match Event::decode_as(body, writer) {
        Some(event) => event.map(Decoded::Event),
        None => Command::decode_as(body, writer)
            .expect("an event or a command")
            .map(Decoded::Command),
    };
    [decode(&subject.positional), decode(&subject.resolving)]
}

fn assert_agree(subject: &Subject, body: &[u8], what: &str) -> Result<(), TestCaseError> {
    let [positional, resolving] = both(subject, body);
    match (&positional, &resolving) {
        // A damaged double may be NaN, which equals nothing: then the debug forms must match.
        (Ok(a), Ok(b)) => prop_assert!(
            a == b || format!("{a:?}") == format!("{b:?}"),
            "{} {what}: positional {a:?} but serde {b:?}",
            subject.name
        ),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(
            false,
            "{} {what}: positional {positional:?} but serde {resolving:?} for {body:?}",
            subject.name
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn positional_and_serde_decode_alike(
        record in any::<prop::sample::Index>(),
        entropy in prop::collection::vec(any::<u8>(), 0..400),
        damage in any::<(u8, prop::sample::Index, u8)>(),
    ) {
        thread_local! {
            static CONTRACT: Contract = contract();
        }
        CONTRACT.with(|contract| {
            let subject = &contract.subjects[record.index(contract.subjects.len())];
            let mut body = Vec::new();
            Writes { named: &contract.named }.value(
                &subject.schema,
                &mut Entropy(entropy.iter()),
                &mut body,
            );
            assert_agree(subject, &body, "written body")?;
            let (kind, at, byte) = damage;
            let mut damaged = body.clone();
            match kind % 3 {
                0 => damaged.truncate(at.index(body.len().max(1))),
                1 if !body.is_empty() => damaged[at.index(body.len())] = byte,
                _ => damaged.push(byte),
            }
            assert_agree(subject, &damaged, "damaged body")
        })?;
    }
}

#[test]
fn the_hot_records_have_a_positional_decoder_and_a_union_of_records_has_none() {
    use crate::codec::Record;
    use crate::types::{
        CommandResult, LogMeal, MealLogged, MealUpdated, UserRegistered, WaterIntakeLogged,
    };
    assert!(MealLogged::POSITIONAL.is_some());
    assert!(MealUpdated::POSITIONAL.is_some());
    assert!(WaterIntakeLogged::POSITIONAL.is_some());
    assert!(UserRegistered::POSITIONAL.is_some());
    assert!(LogMeal::POSITIONAL.is_some());
    assert!(CommandResult::POSITIONAL.is_none());
}
