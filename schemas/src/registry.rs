//! The schema registry behind a trait, with a client for the Confluent REST API (served by
//! Confluent Schema Registry and by Apicurio's `ccompat` API alike).
//!
//! Errors are classified where they are raised: a registry that does not answer (connection,
//! timeout, 5xx) is retryable; an id or subject it does not know, or a schema it refuses, is
//! permanent.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// The content type of the Confluent REST API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not answer, timed out, or answered with a server error. Retryable.
    #[error("schema registry at {url} is unavailable: {reason}")]
    Unavailable {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry does not know the schema id or subject. Permanent.
    #[error("schema registry has no {what}")]
    NotFound {
        /// What was looked up, e.g. `schema id 42`.
        what: String,
    },
    /// The registry refused the request (an incompatible schema, a bad request). Permanent.
    #[error("schema registry refused {request}: HTTP {status}: {message}")]
    Refused {
        /// What was asked.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The answer was not what the API promises. Permanent.
    #[error("schema registry answered {request} with something unexpected: {reason}")]
    Protocol {
        /// What was asked.
        request: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl RegistryError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// The registry's verdict on a candidate schema for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibilityVerdict {
    /// True when the subject's compatibility rule accepts the schema.
    pub compatible: bool,
    /// The registry's reasons, when it gives any.
    pub messages: Vec<String>,
}

/// What dietstream needs of a schema registry.
pub trait SchemaRegistry: Send + Sync {
    /// The schema text registered under `id`.
    fn schema_by_id(&self, id: u32) -> impl Future<Output = Result<String, RegistryError>> + Send;

    /// Registers `schema` under `subject` (idempotent: an identical schema keeps its id) and
    /// returns its id.
    fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> impl Future<Output = Result<u32, RegistryError>> + Send;

    /// The subject's versions, oldest first; empty when the subject does not exist.
    fn versions(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<u32>, RegistryError>> + Send;

    /// The schema text of one version of a subject.
    fn version_schema(
        &self,
        subject: &str,
        version: u32,
    ) -> impl Future<Output = Result<String, RegistryError>> + Send;

    /// Whether the registry would accept `schema` as the next version of `subject`.
    fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> impl Future<Output = Result<CompatibilityVerdict, RegistryError>> + Send;

    /// The subject's compatibility level, if one is set for the subject itself.
    fn compatibility(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Option<String>, RegistryError>> + Send;

    /// Sets the subject's compatibility level (e.g. `BACKWARD_TRANSITIVE`).
    fn set_compatibility(
        &self,
        subject: &str,
        level: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

/// How to authenticate to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// HTTP basic authentication.
    Basic {
        /// User (an API key on hosted registries).
        username: String,
        /// Password (an API secret on hosted registries).
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

/// A client of the Confluent REST API.
#[derive(Debug, Clone)]
pub struct ConfluentRegistry {
    http: reqwest::Client,
    base_url: String,
    auth: Option<RegistryAuth>,
}

impl ConfluentRegistry {
    /// A client for the API at `base_url` (for Apicurio: `.../apis/ccompat/v7`).
    pub fn new(
        base_url: &str,
        auth: Option<RegistryAuth>,
        timeout: Duration,
    ) -> Result<ConfluentRegistry, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Protocol {
                request: "building the HTTP client".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(ConfluentRegistry {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Option<T>, RegistryError> {
        let request = match &self.auth {
            Some(RegistryAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        let request = request.header(reqwest::header::ACCEPT, CONTENT_TYPE);
        let again = request.try_clone();
        let unavailable = |e: reqwest::Error| RegistryError::Unavailable {
            url: e.url().map(ToString::to_string).unwrap_or_default(),
            reason: e.to_string(),
        };
        let response = match (request.send().await, again) {
            (Ok(response), _) => response,
            // A pooled connection the registry closed while it was being reused (seen with
            // Apicurio under load: the request never reached it). Every call of this client
            // is idempotent (reads, config puts, registering a schema), so it is sent once
            // more, on a fresh connection.
            (Err(e), Some(again)) if e.is_request() || e.is_connect() => {
                again.send().await.map_err(unavailable)?
            }
            (Err(e), _) => return Err(unavailable(e)),
        };
        let status = response.status();
        let url = response.url().to_string();
        let body = response
            .text()
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if status.is_server_error() {
            return Err(RegistryError::Unavailable {
                url,
                reason: format!("HTTP {status}: {body}"),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Refused {
                request: what.to_owned(),
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| RegistryError::Protocol {
                request: what.to_owned(),
                reason: format!("{e}: {body}"),
            })
    }
}

/// The `message` of a Confluent error body, or the body itself.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    serde_json::from_str::<ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| body.to_owned())
}

fn subject_path(subject: &str) -> String {
    url::form_urlencoded::byte_serialize(subject.as_bytes()).collect()
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility_level: Option<String>,
    compatibility: Option<String>,
}

impl SchemaRegistry for ConfluentRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let what = format!("schema id {id}");
        self.call::<SchemaBody>(
            self.http.get(self.url(&format!("/schemas/ids/{id}"))),
            &what,
        )
        .await?
        .map(|b| b.schema)
        .ok_or(RegistryError::NotFound { what })
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let what = format!("registering a schema under subject {subject}");
        let request = self
            .http
            .post(self.url(&format!("/subjects/{}/versions", subject_path(subject))))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "schema": schema }).to_string());
        self.call::<IdBody>(request, &what)
            .await?
            .map(|b| b.id)
            .ok_or(RegistryError::NotFound {
                what: format!("subject {subject}"),
            })
    }

    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let request = self
            .http
            .get(self.url(&format!("/subjects/{}/versions", subject_path(subject))));
        let mut versions = self
            .call::<Vec<u32>>(request, &format!("versions of {subject}"))
            .await?
            .unwrap_or_default();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn version_schema(&self, subject: &str, version: u32) -> Result<String, RegistryError> {
        let what = format!("version {version} of subject {subject}");
        let request = self.http.get(self.url(&format!(
            "/subjects/{}/versions/{version}",
            subject_path(subject)
        )));
        self.call::<SchemaBody>(request, &what)
            .await?
            .map(|b| b.schema)
            .ok_or(RegistryError::NotFound { what })
    }

    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<CompatibilityVerdict, RegistryError> {
        let what = format!("a compatibility check for subject {subject}");
        // Without a version the registry checks against every version its rule names (all of
        // them for the *_TRANSITIVE rules).
        let request = self
            .http
            .post(self.url(&format!(
                "/compatibility/subjects/{}/versions?verbose=true",
                subject_path(subject)
            )))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "schema": schema }).to_string());
        let body = self
            .call::<CompatibilityBody>(request, &what)
            .await?
            .ok_or(RegistryError::NotFound {
                what: format!("subject {subject}"),
            })?;
        Ok(CompatibilityVerdict {
            compatible: body.is_compatible,
            messages: body.messages,
        })
    }

    async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let request = self
            .http
            .get(self.url(&format!("/config/{}", subject_path(subject))));
        Ok(self
            .call::<ConfigBody>(request, &format!("the compatibility of {subject}"))
            .await?
            .and_then(|b| b.compatibility_level.or(b.compatibility)))
    }

    async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let what = format!("setting compatibility {level} on subject {subject}");
        let request = self
            .http
            .put(self.url(&format!("/config/{}", subject_path(subject))))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "compatibility": level }).to_string());
        self.call::<serde_json::Value>(request, &what).await?;
        Ok(())
    }
}

/// A registry held in memory: ids are handed out per distinct schema text, like the real
/// registries do, and compatibility is checked with [`crate::compat`]. For unit tests and
/// benchmarks that must not depend on a server; it implements the same contract as
/// [`ConfluentRegistry`] but does not persist anything.
#[derive(Debug, Default)]
pub struct InMemoryRegistry {
    state: std::sync::Mutex<InMemoryState>,
}

#[derive(Debug, Default)]
struct InMemoryState {
    schemas: Vec<String>,
    subjects: std::collections::BTreeMap<String, Vec<u32>>,
    levels: std::collections::BTreeMap<String, String>,
}

impl InMemoryRegistry {
    fn state(&self) -> std::sync::MutexGuard<'_, InMemoryState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SchemaRegistry for InMemoryRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let state = self.state();
        id.checked_sub(1)
            .and_then(|index| state.schemas.get(index as usize))
            .cloned()
            .ok_or(RegistryError::NotFound {
                what: format!("schema id {id}"),
            })
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let mut state = self.state();
        let id = match state.schemas.iter().position(|s| s == schema) {
            Some(index) => index as u32 + 1,
            None => {
                state.schemas.push(schema.to_owned());
                state.schemas.len() as u32
            }
        };
        let versions = state.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }

    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let state = self.state();
        Ok(state
            .subjects
            .get(subject)
            .map(|ids| (1..=ids.len() as u32).collect())
            .unwrap_or_default())
    }

    async fn version_schema(&self, subject: &str, version: u32) -> Result<String, RegistryError> {
        let id = {
            let state = self.state();
            state
                .subjects
                .get(subject)
                .and_then(|ids| ids.get(version.checked_sub(1)? as usize))
                .copied()
        };
        match id {
            Some(id) => self.schema_by_id(id).await,
            None => Err(RegistryError::NotFound {
                what: format!("version {version} of subject {subject}"),
            }),
        }
    }

    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<CompatibilityVerdict, RegistryError> {
        let previous: Vec<String> = {
            let state = self.state();
            let ids = state.subjects.get(subject).cloned().unwrap_or_default();
            ids.iter()
                .filter_map(|id| state.schemas.get(*id as usize - 1).cloned())
                .collect()
        };
        let parse = |text: &str| {
            apache_avro::Schema::parse_str(text).map_err(|e| RegistryError::Refused {
                request: format!("a compatibility check for subject {subject}"),
                status: 422,
                message: e.to_string(),
            })
        };
        let candidate = parse(schema)?;
        let previous = previous
            .iter()
            .map(|text| parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(
            match crate::compat::check_backward_transitive(&previous, &candidate) {
                Ok(()) => CompatibilityVerdict {
                    compatible: true,
                    messages: Vec::new(),
                },
                Err(e) => CompatibilityVerdict {
                    compatible: false,
                    messages: vec![e.to_string()],
                },
            },
        )
    }

    async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        Ok(self.state().levels.get(subject).cloned())
    }

    async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        self.state()
            .levels
            .insert(subject.to_owned(), level.to_owned());
        Ok(())
    }
}
