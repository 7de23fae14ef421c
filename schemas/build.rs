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
    // name, so the codec can check a record's writer schema against the type asked for.
    let mut records = String::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("readable schema file");
        let full_name = path.file_stem().and_then(|s| s.to_str()).expect("UTF-8");
        let top_level = text.contains("\"dietstream.event_type\"")
            || text.contains("\"dietstream.command_type\"")
            || full_name == "dietstream.commands.CommandResult"
            || full_name == "dietstream.diagnostics.RoundTrip";
        if top_level {
            let type_name = full_name.rsplit('.').next().expect("a name");
            writeln!(
                records,
                "impl crate::codec::Record for crate::types::{type_name} {{\n    const FULL_NAME: &'static str = {full_name:?};\n}}"
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
