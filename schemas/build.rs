//! Embeds every `avro/*.avsc` file and generates the Rust types of the contract from them, so
//! the files stay the single source of truth (DESIGN decision 2).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use rsgen_avro::{Generator, Source};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let avro_dir = manifest.join("avro");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed={}", avro_dir.display());

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

    // Top-level records (events, commands, the command result, the probe) know their full
    // name, so the codec can check a record's writer schema against the type asked for, and
    // their dotted type, which travels in the `event_type` Kafka header.
    let mut records = String::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("readable schema file");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let full_name = path.file_stem().and_then(|s| s.to_str()).expect("UTF-8");
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
            writeln!(
                records,
                "impl crate::codec::Record for crate::types::{type_name} {{\n    const FULL_NAME: &'static str = {full_name:?};\n    const RECORD_TYPE: &'static str = {record_type:?};\n}}"
            )
            .expect("write to string");
        }
    }
    fs::write(out.join("records.rs"), records).expect("write records.rs");

    generate_types(&avro_dir, &out.join("types.rs"));
}

fn generate_types(avro_dir: &Path, target: &Path) {
    let pattern = format!("{}/*.avsc", avro_dir.display());
    let generator = Generator::builder().build().expect("rsgen-avro generator");
    let mut code = Vec::new();
    if let Err(e) = generator.generate(&Source::GlobPattern(&pattern), &mut code) {
        panic!("cannot generate Rust types from {pattern}: {e}");
    }
    fs::write(target, code).expect("write types.rs");
}
