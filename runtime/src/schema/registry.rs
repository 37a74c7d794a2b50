//! The schema registry client: the Confluent REST API (`/schemas/ids/{id}`,
//! `/subjects/{subject}/versions`), which Confluent Schema Registry and Apicurio Registry's
//! `/apis/ccompat/v7` both serve. Blocking (it runs on worker threads and at start-up), with
//! basic or bearer auth and a custom CA. What is cached, and for how long, is `super`'s.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::config::SchemaRegistrySpec;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer, or a server error: the registry may come back, so the caller waits.
    #[error("schema registry {url} unreachable: {message}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The registry has no such schema or subject (404).
    #[error("{what} is not in the schema registry {url}")]
    NotFound {
        /// What was asked for.
        what: String,
        /// The registry.
        url: String,
    },
    /// The registry answered with a refusal (401, 403, 409, 422...).
    #[error("schema registry {url} refused: HTTP {status}: {message}")]
    Refused {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// TLS failed: most often a certificate signed by a CA the client does not trust.
    #[error(
        "schema registry {url}: TLS failed ({message}): if its certificate is signed by a private CA, set `schema-registry.ca-file` to that CA"
    )]
    Tls {
        /// The request URL.
        url: String,
        /// rustls' error.
        message: String,
    },
    /// The `ca-file` could not be used.
    #[error("schema-registry.ca-file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A schema reference: another subject's version that a schema imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// The name it is imported by (an Avro full name, a `.proto` path).
    pub name: String,
    /// The subject holding it.
    pub subject: String,
    /// Its version.
    pub version: i32,
}

/// A schema as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredSchema {
    /// `AVRO` (also when absent), `PROTOBUF` or `JSON`.
    #[serde(default = "avro")]
    pub schema_type: String,
    /// The schema text (a `.proto` file may come as a base64 `FileDescriptorProto`).
    pub schema: String,
    /// What it imports.
    #[serde(default)]
    pub references: Vec<Reference>,
}

fn avro() -> String {
    "AVRO".into()
}

#[derive(Deserialize)]
struct Id {
    id: u32,
}

#[derive(Deserialize)]
struct Version {
    id: u32,
    #[serde(flatten)]
    schema: RegisteredSchema,
}

/// A registry client.
#[derive(Clone)]
pub struct Registry {
    base: String,
    agent: Agent,
    authorization: Option<Arc<str>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.base).finish()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    /// A client for `spec` (relative paths against `base_dir`).
    pub fn new(
        spec: &SchemaRegistrySpec,
        base_dir: &std::path::Path,
    ) -> Result<Registry, RegistryError> {
        let mut config = Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(spec.timeout_ms)))
            .http_status_as_error(false);
        if let Some(ca) = &spec.ca_file {
            let path = base_dir.join(ca);
            let ca_error = |message: String| RegistryError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(&path).map_err(|e| ca_error(e.to_string()))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            config = config.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        let authorization = match (&spec.username, &spec.password, &spec.bearer_token) {
            (Some(user), Some(password), _) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            (_, _, Some(token)) => Some(format!("Bearer {token}")),
            _ => None,
        };
        Ok(Registry {
            base: spec.url.trim_end_matches('/').to_owned(),
            agent: config.build().into(),
            authorization: authorization.map(Into::into),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with id `id`.
    pub fn schema(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        self.get(&format!("/schemas/ids/{id}"), || format!("schema id {id}"))
    }

    /// Version `version` (a number or `latest`) of `subject`, with its id.
    pub fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<(u32, RegisteredSchema), RegistryError> {
        let v: Version = self.get(
            &format!("/subjects/{}/versions/{version}", encode(subject)),
            || format!("version {version} of subject `{subject}`"),
        )?;
        Ok((v.id, v.schema))
    }

    /// Registers `schema` under `subject` (the existing id if it is there already).
    pub fn register(&self, subject: &str, schema: &RegisteredSchema) -> Result<u32, RegistryError> {
        let id: Id = self.post(
            &format!("/subjects/{}/versions", encode(subject)),
            schema,
            || format!("subject `{subject}`"),
        )?;
        Ok(id.id)
    }

    /// The id of `schema` if `subject` has it.
    pub fn lookup(&self, subject: &str, schema: &RegisteredSchema) -> Result<u32, RegistryError> {
        let v: Version = self.post(&format!("/subjects/{}", encode(subject)), schema, || {
            format!("this schema under subject `{subject}`")
        })?;
        Ok(v.id)
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: impl FnOnce() -> String,
    ) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url).header("Accept", CONTENT_TYPE);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", &**auth);
        }
        self.answer(&url, request.call(), what)
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &RegisteredSchema,
        what: impl FnOnce() -> String,
    ) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body).expect("a schema serializes");
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", CONTENT_TYPE)
            .header("Accept", CONTENT_TYPE);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", &**auth);
        }
        self.answer(&url, request.send(&body[..]), what)
    }

    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: impl FnOnce() -> String,
    ) -> Result<T, RegistryError> {
        let unreachable = |message: String| RegistryError::Unreachable {
            url: url.to_owned(),
            message,
        };
        let mut response = response.map_err(|e| match e {
            ureq::Error::Rustls(e) => RegistryError::Tls {
                url: url.to_owned(),
                message: e.to_string(),
            },
            e => unreachable(e.to_string()),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| unreachable(e.to_string()))?;
        match status {
            200..=299 => serde_json::from_str(&text).map_err(|e| {
                unreachable(format!(
                    "an answer that is not the registry's API ({e}): {}",
                    clip(&text)
                ))
            }),
            404 => Err(RegistryError::NotFound {
                what: what(),
                url: self.base.clone(),
            }),
            408 | 429 | 500.. => Err(unreachable(format!("HTTP {status}: {}", clip(&text)))),
            _ => Err(RegistryError::Refused {
                url: url.to_owned(),
                status,
                message: serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| clip(&text)),
            }),
        }
    }
}

/// A subject as one URL path segment.
fn encode(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_path_segment() {
        assert_eq!(encode("bookings-value"), "bookings-value");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn a_schema_without_type_is_avro() {
        let s: RegisteredSchema = serde_json::from_str(r#"{"schema": "\"string\""}"#).unwrap();
        assert_eq!(s.schema_type, "AVRO");
        assert!(s.references.is_empty());
    }
}
