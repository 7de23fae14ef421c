//! Embeds every `avro/*.avsc` file and generates the Rust types of the contract from them, so
//! the files stay the single source of truth (DESIGN decision 2).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use rsgen_avro::{Generator, Source};

include!("build_positional.rs");

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let avro_dir = manifest.join("avro");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed={}", avro_dir.display());
    println!("cargo:rerun-if-changed=build_positional.rs");

    let mut files: Vec<PathBuf> = fs::read_dir(&avro_dir)
        .expect("schemas/avro exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "avsc"))
        .collect();
    files.sort();

    let mut embedded = String::from("&[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name");
        writeln!(
            embedded,
            "    ({stem:?}, include_str!({:?})),",
            path.display()
        )
        .expect("write to string");
    }
    embedded.push(']');
    fs::write(out.join("avsc_files.rs"), embedded).expect("write avsc_files.rs");

    // Each file's named type by its full name, the file's stem (schemas/README.md, "Naming
    // rules").
    let schemas: BTreeMap<String, serde_json::Value> = files
        .iter()
        .map(|path| {
            let text = fs::read_to_string(path).expect("readable schema file");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("UTF-8");
            (stem.to_owned(), json)
        })
        .collect();
    let types_code = generate_types(&avro_dir);
    let (positional, readable) = positional_decoders(&schemas, &types_code);
    fs::write(out.join("types.rs"), types_code).expect("write types.rs");
    fs::write(out.join("positional.rs"), positional).expect("write positional.rs");

    // Top-level records (events, commands, the command result, the probe) know their full
    // name, so the codec can check a record's writer schema against the type asked for, and
    // their dotted type, which travels in the `event_type` Kafka header. Those with a
    // positional decoder name it.
    let mut records = String::new();
    let mut events = Vec::new();
    let mut commands = Vec::new();
    for (full_name, json) in &schemas {
        let full_name = full_name.as_str();
        let attribute = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let record_type = attribute("dietstream.event_type")
            .or_else(|| attribute("dietstream.command_type"))
            .or_else(|| attribute("dietstream.record_type"))
            .or_else(|| {
                (full_name == "dietstream.diagnostics.RoundTrip")
                    .then(|| "diagnostics.roundtrip".to_owned())
            });
        if let Some(record_type) = record_type {
            let type_name = full_name.rsplit('.').next().expect("a name");
            if json.get("dietstream.event_type").is_some() {
                events.push(type_name.to_owned());
            } else if json.get("dietstream.command_type").is_some() {
                commands.push(type_name.to_owned());
            }
            let positional = if readable.contains(full_name) {
                "    const POSITIONAL: Option<crate::positional::ReadFn<Self>> = Some(crate::positional::decode::<Self>);\n"
            } else {
                ""
            };
            writeln!(
                records,
                "impl crate::codec::Record for crate::types::{type_name} {{\n    const FULL_NAME: &'static str = {full_name:?};\n    const RECORD_TYPE: &'static str = {record_type:?};\n{positional}}}"
            )
            .expect("write to string");
        }
    }
    fs::write(out.join("records.rs"), records).expect("write records.rs");
    let mut envelopes = envelope_enum("Event", "event", "EventHeader", &events);
    envelopes.push_str(&envelope_enum(
        "Command",
        "command",
        "CommandHeader",
        &commands,
    ));
    fs::write(out.join("envelopes.rs"), envelopes).expect("write envelopes.rs");
}

/// `enum <name>` with one variant per event (or command) record, named and typed like the
/// record, and the accessors every variant shares. See `src/envelope.rs`.
fn envelope_enum(name: &str, what: &str, header: &str, variants: &[String]) -> String {
    let mut code = String::new();
    let arms = |body: &str| -> String {
        variants
            .iter()
            .map(|v| {
                let binding = if body.contains('$') { "_" } else { "r" };
                format!(
                    "            {name}::{v}({binding}) => {},\n",
                    body.replace('$', v)
                )
            })
            .collect()
    };
    writeln!(
        code,
        "/// Every {what} record of the contract, one variant per record type.\n\
         #[derive(Debug, Clone, PartialEq)]\n\
         pub enum {name} {{"
    )
    .expect("write to string");
    for v in variants {
        writeln!(code, "    /// `{v}`.\n    {v}(crate::types::{v}),").expect("write to string");
    }
    code.push_str("}\n\n");
    writeln!(
        code,
        "impl {name} {{\n\
         \x20   /// Full names of every {what} record, sorted.\n\
         \x20   pub const FULL_NAMES: &'static [&'static str] = &[{names}];\n\n\
         \x20   /// The shared metadata.\n\
         \x20   pub fn header(&self) -> &crate::types::{header} {{\n        match self {{\n{h}        }}\n    }}\n\n\
         \x20   /// The shared metadata, to fill in.\n\
         \x20   pub fn header_mut(&mut self) -> &mut crate::types::{header} {{\n        match self {{\n{hm}        }}\n    }}\n\n\
         \x20   /// The record's full Avro name.\n\
         \x20   pub fn full_name(&self) -> &'static str {{\n        match self {{\n{fname}        }}\n    }}\n\n\
         \x20   /// The dotted type: the `event_type` Kafka header.\n\
         \x20   pub fn record_type(&self) -> &'static str {{\n        match self {{\n{rtype}        }}\n    }}\n\n\
         \x20   /// Encodes the record for `topic` (see [`crate::codec::Codec::encode`]).\n\
         \x20   pub async fn encode<R: crate::registry::SchemaRegistry>(&self, codec: &crate::codec::Codec<R>, topic: &str) -> Result<Vec<u8>, crate::codec::CodecError> {{\n        match self {{\n{enc}        }}\n    }}\n\n\
         \x20   /// Decodes `body` as the record `writer` names (see [`crate::codec::Writer`]);\n\
         \x20   /// `None` when that is not a {what}.\n\
         \x20   pub(crate) fn decode_as(body: &[u8], writer: &crate::codec::Writer) -> Option<Result<{name}, String>> {{\n        Some(match writer.{what}_index? {{\n{dec}            _ => return None,\n        }})\n    }}\n}}\n",
        names = variants
            .iter()
            .map(|v| format!("<crate::types::{v} as crate::codec::Record>::FULL_NAME"))
            .collect::<Vec<_>>()
            .join(", "),
        h = arms("&r.header"),
        hm = arms("&mut r.header"),
        fname = arms("<crate::types::$ as crate::codec::Record>::FULL_NAME"),
        rtype = arms("<crate::types::$ as crate::codec::Record>::RECORD_TYPE"),
        enc = arms("codec.encode(topic, r).await"),
        dec = variants
            .iter()
            .enumerate()
            .map(|(index, v)| format!(
                "            {index} => writer.decode(body).map({name}::{v}),\n"
            ))
            .collect::<String>(),
    )
    .expect("write to string");
    code
}

fn generate_types(avro_dir: &Path) -> String {
    let pattern = format!("{}/*.avsc", avro_dir.display());
    let generator = Generator::builder().build().expect("rsgen-avro generator");
    let mut code = Vec::new();
    if let Err(e) = generator.generate(&Source::GlobPattern(&pattern), &mut code) {
        panic!("cannot generate Rust types from {pattern}: {e}");
    }
    let code = String::from_utf8(code).expect("generated code is UTF-8");
    name_union_variants(&code, avro_dir)
}

/// rsgen-avro names the variants of a union of records after the records' short names, but
/// Avro decoders (serde_avro_fast among them) name a union branch by the record's full name.
/// Each such variant gets `#[serde(rename = "<full name>", alias = "<short name>")]`, so a
/// record holding a union decodes into the generated type.
fn name_union_variants(code: &str, avro_dir: &Path) -> String {
    let mut full_names = std::collections::HashMap::new();
    for entry in fs::read_dir(avro_dir).expect("schemas/avro exists") {
        let path = entry.expect("readable entry").path();
        if let Some(full) = path.file_stem().and_then(|s| s.to_str()) {
            if let Some(short) = full.rsplit('.').next() {
                full_names.insert(short.to_owned(), full.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(code.len());
    let mut in_union = false;
    for line in code.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("pub enum Union") {
            in_union = true;
        } else if in_union && trimmed == "}" {
            in_union = false;
        } else if in_union {
            // A variant line: `Name(Name),`
            if let Some((variant, rest)) = trimmed.split_once('(') {
                let inner = rest.trim_end_matches("),");
                if inner == variant {
                    if let Some(full) = full_names.get(variant) {
                        out.push_str(&format!(
                            "    #[serde(rename = {full:?}, alias = {variant:?})]\n"
                        ));
                    }
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
