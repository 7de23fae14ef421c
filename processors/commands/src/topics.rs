//! The topics the command processor reads and writes, resolved from the topology (DESIGN
//! decision 1: names live in `topology/`, not in code).

use std::collections::HashMap;

use dietstream_topology::{Desired, Kind};

use crate::domain::AggregateKind;

/// The processor name in `topology.toml` (`[[consumers]] processor = "commands"`).
pub const PROCESSOR: &str = "commands";

/// Every topic of the command processor, prefixed as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Consumer group (and the stem of the transactional id).
    pub group: String,
    /// `diet.commands`.
    pub commands: String,
    /// `diet.command-results`.
    pub results: String,
    /// Partitions of the results topic (replies are partitioned by aggregate id too).
    pub result_partitions: i32,
    /// `diet.dlq.commands`.
    pub dead_letter: String,
    /// The event topic of each aggregate kind.
    pub events: HashMap<AggregateKind, String>,
    /// The snapshot topic of each aggregate kind.
    pub snapshots: HashMap<AggregateKind, String>,
    /// Partitions of the command, event and snapshot topics (equal by construction).
    pub partitions: i32,
}

impl AggregateKind {
    /// Every kind, in a fixed order.
    pub const ALL: [AggregateKind; 3] = [
        AggregateKind::User,
        AggregateKind::Social,
        AggregateKind::Ai,
    ];

    /// The aggregate name of the kind's topics in `topology.toml` (`aggregate = "user"`).
    pub const fn topic_suffix(self) -> &'static str {
        match self {
            AggregateKind::User => "user",
            AggregateKind::Social => "social",
            AggregateKind::Ai => "ai",
        }
    }
}

/// The topology lacks something the command processor needs.
#[derive(Debug, thiserror::Error)]
#[error("topology: {0}")]
pub struct TopologyMismatch(String);

impl Topics {
    /// Resolves the topics of the `commands` consumer from `desired`, and checks that the
    /// command, event and snapshot topics have one partition count: partition p of
    /// `diet.commands` owns the aggregates of partition p of the others.
    pub fn from_desired(desired: &Desired) -> Result<Topics, TopologyMismatch> {
        let consumer = desired
            .consumers
            .iter()
            .find(|c| c.processor == PROCESSOR)
            .ok_or_else(|| TopologyMismatch(format!("no consumer for processor {PROCESSOR:?}")))?;
        let of_kind = |kind: Kind, aggregate: Option<&str>| {
            desired
                .topics
                .iter()
                .find(|t| {
                    t.kind == kind && aggregate.is_none_or(|a| t.aggregate.as_deref() == Some(a))
                })
                .ok_or_else(|| {
                    TopologyMismatch(format!(
                        "no {} topic{}",
                        kind.name(),
                        aggregate.map(|a| format!(" for {a}")).unwrap_or_default()
                    ))
                })
        };
        let commands = of_kind(Kind::Command, None)?;
        let results = of_kind(Kind::CommandResult, None)?;
        let mut events = HashMap::new();
        let mut snapshots = HashMap::new();
        for kind in AggregateKind::ALL {
            let name = kind.topic_suffix();
            for (map, topic_kind) in [(&mut events, Kind::Event), (&mut snapshots, Kind::Snapshot)]
            {
                let topic = of_kind(topic_kind, Some(name))?;
                if topic.partitions != commands.partitions {
                    return Err(TopologyMismatch(format!(
                        "{} has {} partitions but {} has {}: they must be equal",
                        topic.name, topic.partitions, commands.name, commands.partitions
                    )));
                }
                map.insert(kind, topic.name.clone());
            }
        }
        Ok(Topics {
            group: consumer.group.clone(),
            commands: commands.name.clone(),
            results: results.name.clone(),
            result_partitions: results.partitions,
            dead_letter: consumer.dead_letter.clone(),
            events,
            snapshots,
            partitions: commands.partitions,
        })
    }

    /// The event topic of `kind`.
    pub fn events_of(&self, kind: AggregateKind) -> &str {
        self.events.get(&kind).map_or("", String::as_str)
    }

    /// The snapshot topic of `kind`.
    pub fn snapshots_of(&self, kind: AggregateKind) -> &str {
        self.snapshots.get(&kind).map_or("", String::as_str)
    }
}
