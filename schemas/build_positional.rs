// Part of the build script (`include!`d by build.rs): generates the positional decoders of
// `src/positional.rs` from the `.avsc` files. Each file defines one named type and refers to
// every other by its full name (schemas/README.md, "Naming rules"); a type defined inline or
// referred to otherwise gets no reader and is decoded by serde.

use std::collections::{BTreeMap, HashMap, HashSet};

fn short_name(full: &str) -> &str {
    full.rsplit('.').next().expect("a name")
}

/// `(symbol, variant)` pairs of every enum rsgen-avro generated, read from its code.
fn enum_variants(code: &str) -> HashMap<String, Vec<(String, String)>> {
    let mut enums = HashMap::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    let mut renamed: Option<String> = None;
    for line in code.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("pub enum ")
            .and_then(|rest| rest.strip_suffix(" {"))
        {
            current = Some((name.to_owned(), Vec::new()));
        } else if line == "}" {
            if let Some((name, variants)) = current.take() {
                enums.insert(name, variants);
            }
        } else if let Some((_, variants)) = current.as_mut() {
            if let Some(symbol) = line
                .strip_prefix("#[serde(rename = \"")
                .and_then(|rest| rest.strip_suffix("\")]"))
            {
                renamed = Some(symbol.to_owned());
            } else if let Some(variant) = line.strip_suffix(',') {
                if variant.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    let symbol = renamed.take().unwrap_or_else(|| variant.to_owned());
                    variants.push((symbol, variant.to_owned()));
                }
            }
        }
    }
    enums
}

struct Positional<'a> {
    /// Every named type's definition, by full name.
    named: &'a BTreeMap<String, serde_json::Value>,
    /// Records known to decode positionally (`true`) or not (`false`).
    capable: HashMap<String, bool>,
    visiting: HashSet<String>,
}

impl Positional<'_> {
    /// True when the record or enum `full` can be read by a generated decoder: every field's
    /// type is one this generator reads, and no type contains itself.
    fn capable(&mut self, full: &str) -> bool {
        if let Some(known) = self.capable.get(full) {
            return *known;
        }
        if !self.visiting.insert(full.to_owned()) {
            return false;
        }
        let def = self.named.get(full).expect("a defined type");
        let capable = match def["type"].as_str() {
            Some("enum") => true,
            Some("record") => def["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .all(|field| self.expr(&field["type"]).is_some()),
            _ => false,
        };
        self.visiting.remove(full);
        self.capable.insert(full.to_owned(), capable);
        capable
    }

    /// The expression that reads a value of `ty` from the reader `r`, or `None` when this
    /// generator does not read that type.
    fn expr(&mut self, ty: &serde_json::Value) -> Option<String> {
        match ty {
            serde_json::Value::String(name) => self.named_expr(name),
            serde_json::Value::Array(branches) => {
                let null = branches.iter().position(|b| b.as_str() == Some("null"))?;
                if branches.len() != 2 {
                    return None;
                }
                let value = self.expr(&branches[1 - null])?;
                Some(if null == 0 {
                    format!("match r.branch(2)? {{ 0 => None, _ => Some({value}) }}")
                } else {
                    format!("match r.branch(2)? {{ 0 => Some({value}), _ => None }}")
                })
            }
            serde_json::Value::Object(object) => {
                let kind = object.get("type")?.as_str()?;
                let logical = object.get("logicalType").and_then(|l| l.as_str());
                match (kind, logical) {
                    ("string", Some("uuid")) => Some("r.uuid()?".to_owned()),
                    ("array", _) => {
                        let item = self.expr(&object["items"])?;
                        Some(format!("r.array(|r| Ok({item}))?"))
                    }
                    ("map", _) => {
                        let value = self.expr(&object["values"])?;
                        Some(format!("r.map(|r| Ok({value}))?"))
                    }
                    ("record" | "enum" | "fixed", _) => None,
                    // Another logical type on a primitive (date, timestamp-micros, ...): the
                    // generated types hold the primitive.
                    (primitive, _) => self.named_expr(primitive),
                }
            }
            _ => None,
        }
    }

    fn named_expr(&mut self, name: &str) -> Option<String> {
        Some(match name {
            "boolean" => "r.boolean()?".to_owned(),
            "int" => "r.int()?".to_owned(),
            "long" => "r.long()?".to_owned(),
            "float" => "r.float()?".to_owned(),
            "double" => "r.double()?".to_owned(),
            "string" => "r.string()?".to_owned(),
            "bytes" => "r.bytes()?".to_owned(),
            full => {
                if !self.named.contains_key(full) || !self.capable(full) {
                    return None;
                }
                format!(
                    "<crate::types::{} as crate::positional::Positional>::read(r)?",
                    short_name(full)
                )
            }
        })
    }
}

/// The code of every positional decoder, and the full names of the records that have one.
fn positional_decoders(
    named: &BTreeMap<String, serde_json::Value>,
    types_code: &str,
) -> (String, HashSet<String>) {
    let enums = enum_variants(types_code);
    let mut generator = Positional {
        named,
        capable: HashMap::new(),
        visiting: HashSet::new(),
    };
    let mut code = String::new();
    let mut capable = HashSet::new();
    for (full, def) in named {
        if !generator.capable(full) {
            continue;
        }
        let name = short_name(full);
        let body = if def["type"] == "enum" {
            let symbols = def["symbols"].as_array().expect("symbols");
            let variants = enums
                .get(name)
                .unwrap_or_else(|| panic!("rsgen-avro generated no enum {name}"));
            let arms: String = symbols
                .iter()
                .enumerate()
                .map(|(index, symbol)| {
                    let symbol = symbol.as_str().expect("a symbol");
                    let variant = variants
                        .iter()
                        .find(|(s, _)| s == symbol)
                        .map(|(_, v)| v)
                        .unwrap_or_else(|| panic!("enum {name} has no variant for {symbol}"));
                    format!("            {index} => crate::types::{name}::{variant},\n")
                })
                .collect();
            format!(
                "        Ok(match r.branch({count})? {{\n{arms}            index => return Err(crate::positional::PositionalError::Branch {{ index, count: {count} }}),\n        }})\n",
                count = symbols.len()
            )
        } else {
            let fields: String = def["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .map(|field| {
                    let field_name = field["name"].as_str().expect("a field name");
                    let expr = generator
                        .expr(&field["type"])
                        .expect("a capable record's fields are readable");
                    format!("            {field_name}: {expr},\n")
                })
                .collect();
            capable.insert(full.clone());
            format!("        Ok(crate::types::{name} {{\n{fields}        }})\n")
        };
        code.push_str(&format!(
            "impl crate::positional::Positional for crate::types::{name} {{\n    fn read(r: &mut crate::positional::Reader<'_>) -> Result<Self, crate::positional::PositionalError> {{\n{body}    }}\n}}\n\n"
        ));
    }
    (code, capable)
}
