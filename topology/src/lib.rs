//! dietstream's Kafka topology as code: every topic and consumer group as data
//! (`topology/topology.toml`, compiled in), a pure planner that compares it with a cluster, the
//! reconciler behind `dietstream topology diff` and `apply`, and the aggregate partitioner.
//!
//! ```no_run
//! # async fn example(admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use dietstream_topology::{ApplyOutcome, Cluster, Profile, Topology};
//!
//! let desired = Topology::embedded()?.resolve(Profile::Local, "")?;
//! let cluster = Cluster::new(admin, std::time::Duration::from_secs(30));
//! match cluster.apply(&desired).await? {
//!     ApplyOutcome::InSync => println!("nothing to do"),
//!     ApplyOutcome::Applied(plan) => print!("{plan}"),
//!     ApplyOutcome::Refused(plan) => eprint!("refused, nothing changed:\n{plan}"),
//! }
//! # Ok(())
//! # }
//! ```

mod cluster;
mod model;
mod partition;
mod plan;

pub use cluster::{is_retryable_error, ApplyOutcome, Cluster, ClusterError};
pub use model::{
    check_prefix, keys, prefixed, CleanupPolicy, Compression, ConsumerSpec, Desired,
    DesiredConsumer, DesiredTopic, Kind, KindSpec, Kinds, PerProfile, Profile, ProfileSpec,
    TopicConfig, TopicSpec, Topology, TopologyError, EMBEDDED,
};
pub use partition::{murmur2, partition_for, to_positive};
pub use plan::{
    plan, Actual, ActualTopic, ActualValue, Change, Plan, Refusal, UnsafeChange, ValueSource,
    Warning,
};
