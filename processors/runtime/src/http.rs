//! The HTTP endpoint of a processor process: `GET /metrics` for Prometheus, `GET /health/live`
//! and `GET /health/ready` for the orchestrator, from the state the consume loops set on
//! [`Health`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle};
use tracing::{info, warn};

/// Why the endpoint could not start or stopped. All are permanent: retrying does not help.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound: taken by another process, not an address of this host,
    /// or a privileged port.
    #[error("cannot listen on {listen} (setting `metrics.listen`): {source}")]
    Bind {
        /// The address asked for.
        listen: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// Serving failed after the start.
    #[error("the metrics endpoint on {listen} failed: {source}")]
    Serve {
        /// The address listened on.
        listen: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// The task that served the endpoint panicked or was cancelled.
    #[error("the metrics endpoint on {listen} ended abnormally: {source}")]
    Task {
        /// The address listened on.
        listen: SocketAddr,
        /// Why the task ended.
        source: JoinError,
    },
}

/// What the health endpoints report, shared by the parts of one process (one part per
/// processor) and cheap to clone. The process is ready when every part is ready, and live
/// while no part has failed.
#[derive(Debug, Clone)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<String, PartState>>>,
    part: Arc<str>,
}

/// The state of one part of the process.
#[derive(Debug, Clone, PartialEq)]
enum PartState {
    Ready,
    NotReady(String),
    Failed(String),
}

impl Health {
    /// A health state with one part, `part` (a processor's name), live and not ready
    /// ("starting").
    pub fn new(part: &str) -> Self {
        let health = Health {
            parts: Arc::default(),
            part: part.into(),
        };
        health.set_not_ready("starting");
        health
    }

    /// A handle to another part of the same process (a second processor in `run all`), live
    /// and not ready ("starting"): the process is ready only once it is too.
    pub fn part(&self, part: &str) -> Self {
        let health = Health {
            parts: Arc::clone(&self.parts),
            part: part.into(),
        };
        health.set_not_ready("starting");
        health
    }

    /// This part is ready: it consumes its partitions.
    pub fn set_ready(&self) {
        self.set(PartState::Ready);
    }

    /// This part is not ready, for `reason` (starting, rebalancing, a database outage ...).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(PartState::NotReady(reason.into()));
    }

    /// This part stopped for good, for `reason`: liveness fails, so that the orchestrator
    /// restarts the process.
    pub fn set_failed(&self, reason: impl Into<String>) {
        self.set(PartState::Failed(reason.into()));
    }

    fn set(&self, state: PartState) {
        // Every update is a single insert, so a panic elsewhere never leaves the map half
        // written: a poisoned lock is still usable.
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.part.to_string(), state);
    }

    /// `Ok` when every part is ready, else one line per part that is not, with its reason.
    fn readiness(&self) -> Result<(), String> {
        self.problems(|state| match state {
            PartState::Ready => None,
            PartState::NotReady(reason) => Some(reason.clone()),
            PartState::Failed(reason) => Some(format!("failed: {reason}")),
        })
    }

    /// `Ok` while no part has failed, else one line per part that has, with its reason.
    fn liveness(&self) -> Result<(), String> {
        self.problems(|state| match state {
            PartState::Failed(reason) => Some(format!("failed: {reason}")),
            PartState::Ready | PartState::NotReady(_) => None,
        })
    }

    fn problems(&self, problem: impl Fn(&PartState) -> Option<String>) -> Result<(), String> {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let lines: Vec<String> = parts
            .iter()
            .filter_map(|(part, state)| problem(state).map(|reason| format!("{part}: {reason}")))
            .collect();
        if lines.is_empty() {
            Ok(())
        } else {
            Err(lines.join("\n"))
        }
    }
}

/// The running endpoint.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// The address listened on, with the actual port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the endpoint has stopped: after the shutdown future completed and the open
    /// requests were answered.
    pub async fn wait(self) -> Result<(), HttpError> {
        let listen = self.local_addr;
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(HttpError::Serve { listen, source }),
            Err(source) => Err(HttpError::Task { listen, source }),
        }
    }
}

/// What the handlers read.
#[derive(Clone)]
struct Endpoint {
    registry: Registry,
    health: Health,
}

/// Binds `listen`, then serves the endpoint on a task of the current tokio runtime until
/// `shutdown` completes. The first request after this returns is answered.
pub async fn serve(
    listen: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, HttpError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| HttpError::Bind { listen, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { listen, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(not_found)
        .with_state(Endpoint { registry, health });
    info!(%local_addr, "Serving /metrics, /health/live and /health/ready.");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(Server { local_addr, task })
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    let families = endpoint.registry.gather();
    let encoder = TextEncoder::new();
    match encoder.encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, encoder.format_type())], text).into_response(),
        Err(error) => {
            warn!(%error, "Cannot encode the metrics.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn live(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    status("live", endpoint.health.liveness())
}

async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    status("ready", endpoint.health.readiness())
}

/// 200 with `ok` when healthy, else 503 with the reasons.
fn status(ok: &str, health: Result<(), String>) -> (StatusCode, String) {
    match health {
        Ok(()) => (StatusCode::OK, format!("{ok}\n")),
        Err(reasons) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reasons}\n")),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /health/live or /health/ready\n",
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::metrics::tests::record_one_of_each;
    use crate::ProcessorMetrics;

    /// An endpoint on a free loopback port, and the sender that stops it.
    async fn start(registry: Registry, health: Health) -> (Server, oneshot::Sender<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = serve(listen, registry, health, async {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        })
        .await
        .expect("serves");
        (server, stop)
    }

    /// GET `path`: (status, content type, body).
    async fn get(server: &Server, path: &str) -> (u16, String, String) {
        // No proxy from the environment may stand between the test and loopback.
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let response = client
            .get(format!("http://{}{path}", server.local_addr()))
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.text().await.expect("body"))
    }

    /// The value of each sample line, keyed by `name{labels}` as the text format writes it.
    fn samples(text: &str) -> BTreeMap<&str, f64> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(series, value)| (series, value.parse().expect("a number")))
            .collect()
    }

    #[tokio::test]
    async fn metrics_are_scraped_with_their_values_and_labels() {
        let registry = Registry::new();
        let metrics = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        record_one_of_each(&metrics);
        let (server, _stop) = start(registry, Health::new("nutrition")).await;

        let (status, content_type, text) = get(&server, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, prometheus::TEXT_FORMAT);
        for name in ProcessorMetrics::NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from\n{text}"
            );
        }
        let scraped = samples(&text);
        // Sample lines as the text format writes them (labels sorted by name).
        let expected = r#"
dietstream_records_consumed_total{processor="nutrition",topic="diet.user.events"} 5
dietstream_records_skipped_total{processor="nutrition",topic="diet.user.events"} 1
dietstream_events_processed_total{event_type="MealLogged",processor="nutrition"} 2
dietstream_errors_total{error_code="cql_timeout",processor="nutrition"} 1
dietstream_dead_letters_total{error_code="bad_magic",processor="nutrition"} 1
dietstream_retries_total{error_code="cql_timeout",processor="nutrition"} 1
dietstream_batch_duration_seconds_bucket{processor="nutrition",le="0.01"} 0
dietstream_batch_duration_seconds_bucket{processor="nutrition",le="0.025"} 1
dietstream_batch_duration_seconds_sum{processor="nutrition"} 0.02
dietstream_batch_duration_seconds_count{processor="nutrition"} 1
dietstream_batch_records_sum{processor="nutrition"} 5
dietstream_batch_records_count{processor="nutrition"} 1
dietstream_cql_write_duration_seconds_bucket{processor="nutrition",table="daily_nutrition",le="0.001"} 0
dietstream_cql_write_duration_seconds_bucket{processor="nutrition",table="daily_nutrition",le="0.0025"} 1
dietstream_cql_write_duration_seconds_count{processor="nutrition",table="daily_nutrition"} 1
dietstream_freshness_seconds_bucket{processor="nutrition",le="0.1"} 0
dietstream_freshness_seconds_bucket{processor="nutrition",le="0.25"} 1
dietstream_freshness_seconds_sum{processor="nutrition"} 0.15
dietstream_assigned_partitions{processor="nutrition"} 2
dietstream_consumer_lag_records{partition="0",processor="nutrition",topic="diet.user.events"} 7
dietstream_consumer_lag_records{partition="1",processor="nutrition",topic="diet.user.events"} 9
dietstream_rebalances_total{kind="assigned",processor="nutrition"} 1
dietstream_rebalances_total{kind="revoked",processor="nutrition"} 0
dietstream_rebalances_total{kind="lost",processor="nutrition"} 0
dietstream_commands_sent_total{command_type="AwardXp",processor="nutrition"} 1
"#;
        for (series, value) in samples(expected) {
            assert_eq!(scraped.get(series), Some(&value), "{series} in\n{text}");
        }

        metrics.forget_partition("diet.user.events", 0);
        let (_, _, text) = get(&server, "/metrics").await;
        let lag: Vec<&str> = samples(&text)
            .into_keys()
            .filter(|series| series.starts_with("dietstream_consumer_lag_records{"))
            .collect();
        assert_eq!(
            lag,
            [
                r#"dietstream_consumer_lag_records{partition="1",processor="nutrition",topic="diet.user.events"}"#
            ]
        );
    }

    #[tokio::test]
    async fn two_processors_on_one_registry_are_told_apart_by_their_label() {
        let registry = Registry::new();
        let nutrition = ProcessorMetrics::new("nutrition", &registry).expect("registers");
        let quests = ProcessorMetrics::new("quests", &registry).expect("registers");
        nutrition.record_consumed("diet.user.events", 4);
        quests.record_consumed("diet.user.events", 6);
        let (server, _stop) = start(registry, Health::new("nutrition")).await;

        let (_, _, text) = get(&server, "/metrics").await;
        let scraped = samples(&text);
        assert_eq!(
            scraped.get(r#"dietstream_records_consumed_total{processor="nutrition",topic="diet.user.events"}"#),
            Some(&4.0)
        );
        assert_eq!(
            scraped.get(
                r#"dietstream_records_consumed_total{processor="quests",topic="diet.user.events"}"#
            ),
            Some(&6.0)
        );
        // One family per name, as the text format requires.
        assert_eq!(
            text.matches("# TYPE dietstream_records_consumed_total counter")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn health_follows_what_the_processors_set_and_other_paths_are_not_found() {
        let nutrition = Health::new("nutrition");
        let (server, _stop) = start(Registry::new(), nutrition.clone()).await;

        assert_eq!(
            get(&server, "/health/ready").await,
            (
                503,
                "text/plain; charset=utf-8".to_owned(),
                "nutrition: starting\n".to_owned()
            )
        );
        assert_eq!(get(&server, "/health/live").await.0, 200);
        nutrition.set_ready();
        assert_eq!(get(&server, "/health/ready").await.2, "ready\n");
        assert_eq!(get(&server, "/health/ready").await.0, 200);

        let quests = nutrition.part("quests");
        nutrition.set_not_ready("partitions revoked");
        assert_eq!(
            get(&server, "/health/ready").await,
            (
                503,
                "text/plain; charset=utf-8".to_owned(),
                "nutrition: partitions revoked\nquests: starting\n".to_owned()
            )
        );
        nutrition.set_ready();
        quests.set_ready();
        assert_eq!(get(&server, "/health/ready").await.0, 200);

        quests.set_failed("the consume loop ended: broker fenced the consumer");
        let (status, _, body) = get(&server, "/health/live").await;
        assert_eq!(
            (status, body.as_str()),
            (
                503,
                "quests: failed: the consume loop ended: broker fenced the consumer\n"
            )
        );
        assert_eq!(get(&server, "/health/ready").await.0, 503);

        for path in ["/", "/metric", "/health", "/health/ready/x"] {
            assert_eq!(get(&server, path).await.0, 404, "{path}");
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_that_names_the_address_and_the_setting() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let listen = taken.local_addr().expect("address");
        let error = serve(listen, Registry::new(), Health::new("nutrition"), async {})
            .await
            .expect_err("the port is taken");
        assert!(matches!(error, HttpError::Bind { .. }));
        let message = error.to_string();
        assert!(message.contains(&listen.to_string()), "{message}");
        assert!(message.contains("metrics.listen"), "{message}");
    }

    #[tokio::test]
    async fn port_zero_reports_the_port_taken_and_shutdown_ends_the_server() {
        let (server, stop) = start(Registry::new(), Health::new("nutrition")).await;
        let address = server.local_addr();
        assert_ne!(address.port(), 0);
        assert_eq!(get(&server, "/health/live").await.0, 200);

        stop.send(()).expect("the server listens for the stop");
        tokio::time::timeout(Duration::from_secs(10), server.wait())
            .await
            .expect("stops in time")
            .expect("stops cleanly");
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
}
