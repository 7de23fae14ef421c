//! The set of `.avsc` files as one checked catalog: every named type once, references resolved,
//! and for each top-level record the self-contained form that is registered and that any
//! Confluent client can parse on its own.

use std::collections::{BTreeMap, HashSet};

use apache_avro::Schema;
use serde_json::{Map, Value};

/// The `.avsc` files compiled into the binary: (full name, JSON text).
pub static EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/avsc_files.rs"));

/// Custom schema attribute naming an event record's dotted type.
pub const EVENT_TYPE_ATTRIBUTE: &str = "dietstream.event_type";
/// Custom schema attribute naming a command record's dotted type.
pub const COMMAND_TYPE_ATTRIBUTE: &str = "dietstream.command_type";
/// Custom schema attribute naming the aggregate type of an event or command.
pub const AGGREGATE_TYPE_ATTRIBUTE: &str = "dietstream.aggregate_type";
/// Full name of the reply to every command.
pub const COMMAND_RESULT: &str = "dietstream.commands.CommandResult";
/// Full name of the diagnostics probe record.
pub const ROUND_TRIP: &str = "dietstream.diagnostics.RoundTrip";
/// Full name of the aggregate snapshot record (written to every snapshot topic).
pub const AGGREGATE_SNAPSHOT: &str = "dietstream.snapshots.AggregateSnapshot";

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Why the schema files do not form a valid catalog. Always permanent: the files must change.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file is not JSON.
    #[error("{file}.avsc is not JSON: {source}")]
    Json {
        /// The file's name without `.avsc`.
        file: String,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// A file does not define one named type whose full name is the file name.
    #[error("{file}.avsc must define the named type {file} at its top level, found {found}")]
    Misnamed {
        /// The file's name without `.avsc`.
        file: String,
        /// What the file defines instead.
        found: String,
    },
    /// Two files define the same type.
    #[error("{0} is defined twice")]
    Duplicate(String),
    /// A reference names no type of the catalog.
    #[error("{referrer} refers to {missing}, which no file defines")]
    UnknownReference {
        /// The type whose definition holds the reference.
        referrer: String,
        /// The name that does not resolve.
        missing: String,
    },
    /// The expanded schema is valid Avro but the codec's parser refuses it.
    #[error("{name} cannot be used by the codec: {reason}")]
    Codec {
        /// The top-level type.
        name: String,
        /// What the codec's schema parser said.
        reason: String,
    },
    /// The expanded schema is not valid Avro.
    #[error("{name} is not valid Avro: {source}")]
    Avro {
        /// The top-level type.
        name: String,
        /// What apache-avro said.
        source: Box<apache_avro::Error>,
    },
}

/// What a top-level record is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRole {
    /// An event on an event topic.
    Event {
        /// Dotted type, e.g. `nutrition.meal.logged`.
        event_type: String,
        /// `USER`, `SOCIAL`, `AI` or `SYSTEM`.
        aggregate_type: String,
    },
    /// A command on `diet.commands`.
    Command {
        /// Dotted type, e.g. `nutrition.meal.log`.
        command_type: String,
        /// The aggregate type the command addresses.
        aggregate_type: String,
    },
    /// The reply to a command.
    CommandResult,
    /// Aggregate state on a snapshot topic.
    Snapshot,
    /// The diagnostics probe of `dietstream roundtrip`.
    Diagnostics,
}

/// A top-level record of the contract: something written to a topic on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLevelRecord {
    /// Full Avro name, e.g. `dietstream.events.nutrition.MealLogged`.
    pub name: String,
    /// What it is for.
    pub role: RecordRole,
}

/// Every named type of the contract, by full name.
#[derive(Debug, Clone)]
pub struct Catalog {
    definitions: BTreeMap<String, Value>,
}

impl Catalog {
    /// The catalog of the files compiled into this binary.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Catalog::from_files(EMBEDDED.iter().copied())
    }

    /// Builds and checks a catalog from (full name, JSON) pairs, in any order.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, CatalogError> {
        let mut definitions = BTreeMap::new();
        for (file, text) in files {
            let json: Value = serde_json::from_str(text).map_err(|source| CatalogError::Json {
                file: file.to_owned(),
                source,
            })?;
            let found = defined_name(&json).unwrap_or_else(|| "no named type".to_owned());
            if found != file {
                return Err(CatalogError::Misnamed {
                    file: file.to_owned(),
                    found,
                });
            }
            if definitions.insert(found.clone(), json).is_some() {
                return Err(CatalogError::Duplicate(found));
            }
        }
        let catalog = Catalog { definitions };
        for name in catalog.definitions.keys() {
            catalog.schema(name)?;
        }
        Ok(catalog)
    }

    /// Full names of every named type, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.definitions.keys().map(String::as_str)
    }

    /// The records written to topics on their own (events, commands, the command result and
    /// the probe), sorted by name.
    pub fn top_level_records(&self) -> Vec<TopLevelRecord> {
        self.definitions
            .iter()
            .filter_map(|(name, json)| {
                let attr = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
                let aggregate_type = attr(AGGREGATE_TYPE_ATTRIBUTE).unwrap_or_default();
                let role = if let Some(event_type) = attr(EVENT_TYPE_ATTRIBUTE) {
                    RecordRole::Event {
                        event_type,
                        aggregate_type,
                    }
                } else if let Some(command_type) = attr(COMMAND_TYPE_ATTRIBUTE) {
                    RecordRole::Command {
                        command_type,
                        aggregate_type,
                    }
                } else if name == COMMAND_RESULT {
                    RecordRole::CommandResult
                } else if name == AGGREGATE_SNAPSHOT {
                    RecordRole::Snapshot
                } else if name == ROUND_TRIP {
                    RecordRole::Diagnostics
                } else {
                    return None;
                };
                Some(TopLevelRecord {
                    name: name.clone(),
                    role,
                })
            })
            .collect()
    }

    /// The self-contained JSON of `name`: every named type it uses is defined inline at its
    /// first use and referred to by full name after that, as Avro requires. This is the text
    /// that is registered.
    pub fn expanded(&self, name: &str) -> Result<String, CatalogError> {
        let mut defined = HashSet::new();
        let root = self.reference(name, name, &mut defined)?;
        Ok(serde_json::to_string(&root).expect("JSON values serialize"))
    }

    /// The parsed schema of `name`, from its expanded form.
    pub fn schema(&self, name: &str) -> Result<Schema, CatalogError> {
        let text = self.expanded(name)?;
        Schema::parse_str(&text).map_err(|source| CatalogError::Avro {
            name: name.to_owned(),
            source: Box::new(source),
        })
    }

    /// A type position naming `name`: its definition the first time, the name afterwards.
    fn reference(
        &self,
        referrer: &str,
        name: &str,
        defined: &mut HashSet<String>,
    ) -> Result<Value, CatalogError> {
        if PRIMITIVES.contains(&name) || defined.contains(name) {
            return Ok(Value::String(name.to_owned()));
        }
        let definition =
            self.definitions
                .get(name)
                .ok_or_else(|| CatalogError::UnknownReference {
                    referrer: referrer.to_owned(),
                    missing: name.to_owned(),
                })?;
        defined.insert(name.to_owned());
        self.expand(name, definition, defined)
    }

    /// Expands every type position inside `value`, a type definition of `owner`.
    fn expand(
        &self,
        owner: &str,
        value: &Value,
        defined: &mut HashSet<String>,
    ) -> Result<Value, CatalogError> {
        match value {
            Value::String(name) => self.reference(owner, name, defined),
            Value::Array(branches) => branches
                .iter()
                .map(|branch| self.expand(owner, branch, defined))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(object) => {
                if let Some(name) = defined_name(value) {
                    // Inline definitions count too: later uses must refer to them by name.
                    defined.insert(name);
                }
                let mut out = Map::new();
                for (key, inner) in object {
                    let expanded = match key.as_str() {
                        "type" if !inner.is_string() || !is_complex_keyword(inner) => {
                            self.expand(owner, inner, defined)?
                        }
                        "items" | "values" => self.expand(owner, inner, defined)?,
                        "fields" => Value::Array(
                            inner
                                .as_array()
                                .map(Vec::as_slice)
                                .unwrap_or_default()
                                .iter()
                                .map(|field| self.expand_field(owner, field, defined))
                                .collect::<Result<_, _>>()?,
                        ),
                        _ => inner.clone(),
                    };
                    out.insert(key.clone(), expanded);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn expand_field(
        &self,
        owner: &str,
        field: &Value,
        defined: &mut HashSet<String>,
    ) -> Result<Value, CatalogError> {
        let mut out = field.as_object().cloned().unwrap_or_default();
        if let Some(field_type) = field.get("type") {
            out.insert("type".to_owned(), self.expand(owner, field_type, defined)?);
        }
        Ok(Value::Object(out))
    }
}

/// `record`, `enum`, `fixed`, `array`, `map`: the `type` of a complex schema object, not a
/// reference.
fn is_complex_keyword(value: &Value) -> bool {
    matches!(
        value.as_str(),
        Some("record" | "enum" | "fixed" | "array" | "map" | "error")
    )
}

/// The full name a schema object defines, if it defines a named type.
pub fn defined_name(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    if !is_complex_keyword(object.get("type")?) {
        return None;
    }
    let name = object.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_owned());
    }
    match object.get("namespace").and_then(Value::as_str) {
        Some(namespace) if !namespace.is_empty() => Some(format!("{namespace}.{name}")),
        _ => Some(name.to_owned()),
    }
}
