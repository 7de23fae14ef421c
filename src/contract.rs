//! `dietstream schemas register | check`: the Avro contract (`schemas/avro`) against a schema
//! registry, one subject per record and topic (TopicRecordNameStrategy), with the
//! compatibility rule enforced by the registry as well as checked here without it.

use apache_avro::Schema;
use dietstream_schemas::catalog::{Catalog, CatalogError, RecordRole};
use dietstream_schemas::compat::check_backward_transitive;
use dietstream_schemas::registry::{RegistryError, SchemaRegistry};
use dietstream_topology::{Desired, Kind};

/// Compatibility levels strict enough for an event store: every reader must read every
/// version ever written, so only the transitive rules qualify.
pub const ACCEPTED_LEVELS: [&str; 2] = ["BACKWARD_TRANSITIVE", "FULL_TRANSITIVE"];

/// The level `schemas register` sets unless told otherwise.
pub const DEFAULT_LEVEL: &str = "BACKWARD_TRANSITIVE";

/// One subject of the contract: a record on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `<topic>-<record full name>`.
    pub name: String,
    /// The record's full Avro name.
    pub record: String,
    /// The topic the record is written to.
    pub topic: String,
}

/// Why the contract could not be compared with the registry.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The schema files are broken. Permanent.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A record has no topic in the topology. Permanent: the topology or the schema must change.
    #[error("{record} has no topic: the topology has no {kind} topic{for_aggregate}")]
    NoTopic {
        /// The record.
        record: String,
        /// The kind of topic looked for.
        kind: &'static str,
        /// ` for aggregate <type>` when it matters.
        for_aggregate: String,
    },
    /// The registry failed (retryable when it did not answer).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A level that would let an event store lose readers.
    #[error("compatibility level {0} is not accepted; use one of {ACCEPTED_LEVELS:?}")]
    WeakLevel(String),
}

/// The subjects of every event, command, command result and snapshot of `catalog` on the topics of
/// `desired` (the diagnostics probe registers itself and is left out).
pub fn subjects(catalog: &Catalog, desired: &Desired) -> Result<Vec<Subject>, ContractError> {
    let topic_of = |kind: Kind, aggregate: Option<&str>, record: &str| {
        desired
            .topics
            .iter()
            .find(|t| t.kind == kind && aggregate.is_none_or(|a| t.aggregate.as_deref() == Some(a)))
            .map(|t| t.name.clone())
            .ok_or_else(|| ContractError::NoTopic {
                record: record.to_owned(),
                kind: kind.name(),
                for_aggregate: aggregate
                    .map(|a| format!(" for aggregate {a}"))
                    .unwrap_or_default(),
            })
    };
    let mut subjects = Vec::new();
    let mut push = |topic: String, record: &str| {
        subjects.push(Subject {
            name: format!("{topic}-{record}"),
            record: record.to_owned(),
            topic,
        });
    };
    for record in catalog.top_level_records() {
        let topic = match &record.role {
            RecordRole::Event { aggregate_type, .. } => topic_of(
                Kind::Event,
                Some(&aggregate_type.to_lowercase()),
                &record.name,
            )?,
            RecordRole::Command { .. } => topic_of(Kind::Command, None, &record.name)?,
            RecordRole::CommandResult => topic_of(Kind::CommandResult, None, &record.name)?,
            RecordRole::Snapshot => {
                // One snapshot record type, written to the snapshot topic of every aggregate type.
                let topics = desired.topics.iter().filter(|t| t.kind == Kind::Snapshot);
                for topic in topics {
                    push(topic.name.clone(), &record.name);
                }
                continue;
            }
            RecordRole::Diagnostics => continue,
        };
        push(topic, &record.name);
    }
    Ok(subjects)
}

/// What `register` did for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject.
    pub subject: String,
    /// The schema id.
    pub id: u32,
    /// True when this call added a version (false: the schema was already registered).
    pub new_version: bool,
}

/// Sets `level` on every subject, then registers every schema. Idempotent: an unchanged
/// schema keeps its id and adds no version. Stops at the first refusal (an incompatible
/// change), leaving the subjects before it registered.
pub async fn register<R: SchemaRegistry>(
    registry: &R,
    catalog: &Catalog,
    subjects: &[Subject],
    level: &str,
) -> Result<Vec<Registered>, ContractError> {
    if !ACCEPTED_LEVELS.contains(&level) {
        return Err(ContractError::WeakLevel(level.to_owned()));
    }
    let mut done = Vec::new();
    for subject in subjects {
        let before = registry.versions(&subject.name).await?.len();
        registry.set_compatibility(&subject.name, level).await?;
        let id = registry
            .register(&subject.name, &catalog.expanded(&subject.record)?)
            .await?;
        let after = registry.versions(&subject.name).await?.len();
        done.push(Registered {
            subject: subject.name.clone(),
            id,
            new_version: after > before,
        });
    }
    Ok(done)
}

/// The verdict of `check` on one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not registered yet: `register` would create it.
    New,
    /// The registry holds exactly this schema as its latest version.
    Unchanged,
    /// A new version that every earlier version's data can be read with.
    Compatible,
    /// `register` would be refused, or readers would break.
    Incompatible(Vec<String>),
    /// The subject's compatibility level is missing or weaker than the accepted ones.
    WeakLevel(Option<String>),
}

impl Verdict {
    /// True when `register` can go ahead for this subject as things stand.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Verdict::New | Verdict::Unchanged | Verdict::Compatible
        )
    }
}

/// Compares every subject's local schema with what the registry holds, changing nothing: the
/// registry's own compatibility check and, independently, a BACKWARD_TRANSITIVE check here
/// against every registered version.
pub async fn check<R: SchemaRegistry>(
    registry: &R,
    catalog: &Catalog,
    subjects: &[Subject],
) -> Result<Vec<(Subject, Verdict)>, ContractError> {
    let mut verdicts = Vec::new();
    for subject in subjects {
        let local_text = catalog.expanded(&subject.record)?;
        let local = catalog.schema(&subject.record)?;
        let versions = registry.versions(&subject.name).await?;
        let Some(latest) = versions.last() else {
            verdicts.push((subject.clone(), Verdict::New));
            continue;
        };
        let level = registry.compatibility(&subject.name).await?;
        if !level
            .as_deref()
            .is_some_and(|l| ACCEPTED_LEVELS.contains(&l))
        {
            verdicts.push((subject.clone(), Verdict::WeakLevel(level)));
            continue;
        }
        let mut registered = Vec::new();
        for version in &versions {
            let text = registry.version_schema(&subject.name, *version).await?;
            registered.push(Schema::parse_str(&text).map_err(|e| {
                ContractError::Registry(RegistryError::Protocol {
                    request: format!("version {version} of {}", subject.name),
                    reason: format!("not a valid Avro schema: {e}"),
                })
            })?);
        }
        if registered.last() == Some(&local) {
            verdicts.push((subject.clone(), Verdict::Unchanged));
            continue;
        }
        let mut reasons = Vec::new();
        let remote = registry
            .check_compatibility(&subject.name, &local_text)
            .await?;
        if !remote.compatible {
            reasons.push(format!(
                "the registry refuses it ({} at version {latest}){}",
                level.as_deref().unwrap_or("?"),
                if remote.messages.is_empty() {
                    String::new()
                } else {
                    format!(": {}", remote.messages.join("; "))
                }
            ));
        }
        if let Err(e) = check_backward_transitive(&registered, &local) {
            reasons.push(e.to_string());
        }
        verdicts.push((
            subject.clone(),
            if reasons.is_empty() {
                Verdict::Compatible
            } else {
                Verdict::Incompatible(reasons)
            },
        ));
    }
    Ok(verdicts)
}
