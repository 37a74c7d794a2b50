//! librdkafka client configuration from a spec: the one place that turns bootstrap servers,
//! `security` (TLS, SASL, mTLS), properties and properties read from the environment into a
//! `ClientConfig`. Every Kafka client of a run starts here: the source's consumer, the producer
//! (transactional or not), the changelog's readers and admin client, `state dump`, `dlq replay`.
//!
//! Credentials are read from their files or variables each time a client is made, so a rotated
//! Secret is picked up by the next client (a restart). [`check_files`] opens every file a
//! `security` section names the way OpenSSL will at connect time, so `sluice validate` refuses
//! offline what the first connection would refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use sluice_spec::security::{KafkaSecurity, SaslMechanism};

use crate::config::{PipelineSpec, SourceSpec};
use crate::error::RunError;

/// Why a `security` section cannot be turned into client settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file the section names cannot be read.
    #[error(
        "{section}.security.{field}: cannot read {path}: {source}: check the path (a mounted Secret?) and its permissions"
    )]
    Unreadable {
        /// `source.kafka` or `producer`.
        section: String,
        /// The field below `security`.
        field: &'static str,
        /// The file, resolved against the spec.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A secret file or variable is empty.
    #[error("{section}.security.{field}: {what} is empty: write the secret into it")]
    Empty {
        /// `source.kafka` or `producer`.
        section: String,
        /// The field below `security`.
        field: &'static str,
        /// The file or variable.
        what: String,
    },
    /// A variable the section names is not set.
    #[error("{section}.security.{field}: environment variable `{var}` is not set: export it")]
    MissingVar {
        /// `source.kafka` or `producer`.
        section: String,
        /// The field below `security`.
        field: &'static str,
        /// The variable.
        var: String,
    },
    /// A PEM file does not hold what the field needs.
    #[error("{section}.security.{field}: {path}: {problem}")]
    Pem {
        /// `source.kafka` or `producer`.
        section: String,
        /// The field below `security`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// This build of librdkafka lacks what the section needs.
    #[error(
        "{section}.security: {what} needs librdkafka built with `{feature}`, and this sluice has `{builtin}`: use a sluice built with rdkafka's ssl and curl features"
    )]
    Unsupported {
        /// `source.kafka` or `producer`.
        section: String,
        /// What the section asks for.
        what: String,
        /// The missing `builtin.features` entry.
        feature: &'static str,
        /// librdkafka's `builtin.features`.
        builtin: String,
    },
}

/// One of a spec's Kafka connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// The Kafka source's cluster: the consumer, the changelogs, `state dump`, `dlq replay`.
    Source,
    /// The producer's cluster (outputs, dead letters, transactions).
    Producer,
}

/// Where and how a connection reaches Kafka, as the spec says.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    /// `source.kafka` or `producer`: the spec section errors name.
    pub section: &'static str,
    /// `host:port,...`
    pub bootstrap: &'a str,
    /// How it connects.
    pub security: KafkaSecurity,
    /// librdkafka properties passed through.
    pub properties: &'a BTreeMap<String, String>,
    /// librdkafka properties from environment variables.
    pub properties_from_env: &'a BTreeMap<String, String>,
    /// The spec's directory: relative files are resolved against it.
    pub base_dir: PathBuf,
    /// The spec file, for errors.
    pub spec_file: PathBuf,
}

impl<'a> Endpoint<'a> {
    /// The spec's `which` connection; None when the spec has none (a file source, or no
    /// producer bootstrap for a file source).
    pub fn of(spec: &'a PipelineSpec, which: Connection) -> Option<Endpoint<'a>> {
        let base_dir = spec.resolve(Path::new(""));
        let spec_file = spec.file.clone();
        let source = match &spec.source {
            SourceSpec::Kafka(kafka) => Some(kafka),
            SourceSpec::File(_) => None,
        };
        match which {
            Connection::Source => source.map(|kafka| Endpoint {
                section: "source.kafka",
                bootstrap: &kafka.bootstrap_servers,
                security: kafka.security.clone(),
                properties: &kafka.properties,
                properties_from_env: &kafka.properties_from_env,
                base_dir,
                spec_file,
            }),
            Connection::Producer => {
                let bootstrap = spec
                    .producer
                    .bootstrap_servers
                    .as_deref()
                    .or(source.map(|k| k.bootstrap_servers.as_str()))?;
                Some(Endpoint {
                    section: "producer",
                    bootstrap,
                    security: spec.producer_security(),
                    properties: &spec.producer.properties,
                    properties_from_env: &spec.producer.properties_from_env,
                    base_dir,
                    spec_file,
                })
            }
        }
    }

    /// A client configuration: bootstrap, security, then `properties`, then
    /// `properties-from-env`.
    pub fn config(&self) -> Result<ClientConfig, RunError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap);
        let security = self
            .security_properties()
            .map_err(|e| RunError::Setup(format!("{}: {e}", self.spec_file.display())))?;
        for (key, value) in security {
            config.set(key, value);
        }
        for (k, v) in self.properties {
            config.set(k, v);
        }
        for (k, var) in self.properties_from_env {
            let value = std::env::var(var).map_err(|_| {
                RunError::Setup(format!(
                    "{}: {}.properties-from-env.{k}: environment variable `{var}` is not set: export it",
                    self.spec_file.display(),
                    self.section
                ))
            })?;
            config.set(k, value);
        }
        Ok(config)
    }

    fn path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// A secret from a file (one trailing newline dropped) or a variable.
    fn secret(
        &self,
        field_file: &'static str,
        file: Option<&PathBuf>,
        field_env: &'static str,
        var: Option<&String>,
    ) -> Result<Option<String>, SecurityError> {
        let section = self.section.to_owned();
        let (value, field, what) = if let Some(file) = file {
            let path = self.path(file);
            let text =
                std::fs::read_to_string(&path).map_err(|source| SecurityError::Unreadable {
                    section: section.clone(),
                    field: field_file,
                    path: path.clone(),
                    source,
                })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text).to_owned();
            (text, field_file, path.display().to_string())
        } else if let Some(var) = var {
            let value = std::env::var(var).map_err(|_| SecurityError::MissingVar {
                section: section.clone(),
                field: field_env,
                var: var.clone(),
            })?;
            (value, field_env, format!("variable `{var}`"))
        } else {
            return Ok(None);
        };
        if value.is_empty() {
            return Err(SecurityError::Empty {
                section,
                field,
                what,
            });
        }
        Ok(Some(value))
    }

    /// The librdkafka properties of `security`, secrets read.
    pub fn security_properties(&self) -> Result<Vec<(&'static str, String)>, SecurityError> {
        let security = &self.security;
        let mut out = vec![(
            "security.protocol",
            security.protocol.librdkafka().to_owned(),
        )];
        if let Some(sasl) = &security.sasl {
            out.push(("sasl.mechanism", sasl.mechanism.name().to_owned()));
            if let Some(user) = &sasl.username {
                out.push(("sasl.username", user.clone()));
            }
            if let Some(password) = self.secret(
                "sasl.password-file",
                sasl.password_file.as_ref(),
                "sasl.password-env",
                sasl.password_env.as_ref(),
            )? {
                out.push(("sasl.password", password));
            }
            if let (SaslMechanism::OauthBearer, Some(oauth)) = (sasl.mechanism, &sasl.oauthbearer) {
                out.push(("sasl.oauthbearer.method", "oidc".to_owned()));
                out.push((
                    "sasl.oauthbearer.token.endpoint.url",
                    oauth.token_endpoint_url.clone(),
                ));
                out.push(("sasl.oauthbearer.client.id", oauth.client_id.clone()));
                if let Some(secret) = self.secret(
                    "sasl.oauthbearer.client-secret-file",
                    oauth.client_secret_file.as_ref(),
                    "sasl.oauthbearer.client-secret-env",
                    oauth.client_secret_env.as_ref(),
                )? {
                    out.push(("sasl.oauthbearer.client.secret", secret));
                }
                if let Some(scope) = &oauth.scope {
                    out.push(("sasl.oauthbearer.scope", scope.clone()));
                }
                if !oauth.extensions.is_empty() {
                    let extensions: Vec<String> = oauth
                        .extensions
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    out.push(("sasl.oauthbearer.extensions", extensions.join(",")));
                }
            }
        }
        if security.protocol.tls() {
            let tls = security
                .tls
                .clone()
                .unwrap_or(sluice_spec::security::TlsSpec {
                    ca_file: None,
                    certificate_file: None,
                    key_file: None,
                    key_password_file: None,
                    key_password_env: None,
                    verify_hostname: true,
                });
            out.push((
                "ssl.endpoint.identification.algorithm",
                if tls.verify_hostname { "https" } else { "none" }.to_owned(),
            ));
            for (key, file) in [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.certificate_file),
                ("ssl.key.location", &tls.key_file),
            ] {
                if let Some(file) = file {
                    out.push((key, self.path(file).display().to_string()));
                }
            }
            if let Some(password) = self.secret(
                "tls.key-password-file",
                tls.key_password_file.as_ref(),
                "tls.key-password-env",
                tls.key_password_env.as_ref(),
            )? {
                out.push(("ssl.key.password", password));
            }
        }
        Ok(out)
    }

    /// Everything `sluice validate` can check offline: the files and secrets of `security`
    /// (opened as a client would), what this build supports, the properties-from-env
    /// variables, and every property as librdkafka takes it (names and values).
    pub fn validate(&self) -> Result<(), RunError> {
        let spec = self.spec_file.display();
        self.check()
            .map_err(|e| RunError::Setup(format!("{spec}: {e}")))?;
        self.config()?.create_native_config().map_err(|e| {
            RunError::Setup(format!(
                "{spec}: {}.properties: librdkafka refuses them: {e}",
                self.section
            ))
        })?;
        Ok(())
    }

    /// Who this connection is to Kafka, for the messages of its refusals.
    pub fn identity(&self) -> crate::kafka_access::ClientIdentity {
        let mut who = crate::kafka_access::ClientIdentity::new(
            self.section,
            &self.spec_file.display().to_string(),
            &self.security,
        );
        // Security set through librdkafka properties instead of `security`: the login they name.
        let property = |key: &str| self.properties.get(key).map(String::as_str);
        let sasl = property("security.protocol")
            .is_some_and(|p| p.to_ascii_lowercase().starts_with("sasl"));
        if self.security == KafkaSecurity::default() && sasl {
            let mechanism = property("sasl.mechanism")
                .or(property("sasl.mechanisms"))
                .unwrap_or("GSSAPI");
            let user = property("sasl.username").or_else(|| {
                property("sasl.oauthbearer.config")?
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("principal="))
            });
            who.principal = match user {
                Some(user) => format!("User:{user} ({mechanism})"),
                None => format!("the {mechanism} login of {}.properties", self.section),
            };
        }
        let certificate = self
            .security
            .tls
            .as_ref()
            .and_then(|t| t.certificate_file.clone())
            .or_else(|| property("ssl.certificate.location").map(PathBuf::from));
        // mTLS: the broker's default principal builder names the client by its certificate's
        // subject, `User:CN=...` for a subject of one CN.
        if let (None, false, Some(cert)) = (&self.security.sasl, sasl, certificate.as_ref()) {
            let subject = std::fs::read(self.path(cert))
                .ok()
                .and_then(|pem| openssl::x509::X509::from_pem(&pem).ok())
                .map(|cert| {
                    // RFC 2253 order (Kafka's): the last entry first.
                    let mut entries: Vec<_> = cert.subject_name().entries().collect();
                    entries.reverse();
                    entries
                        .into_iter()
                        .map(|e| {
                            let key = e.object().nid().short_name().unwrap_or("?");
                            let value = e.data().to_string().unwrap_or_default();
                            format!("{key}={value}")
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                });
            if let Some(subject) = subject {
                who.principal = format!("User:{subject} (mTLS)");
            }
        }
        who
    }

    /// A one-line summary: `sasl-ssl SCRAM-SHA-512 as User:orders, CA ca.crt`.
    pub fn describe(&self) -> String {
        let security = &self.security;
        let mut text = security.protocol.librdkafka().replace('_', "-");
        if let Some(sasl) = &security.sasl {
            text.push_str(&format!(" {}", sasl.mechanism.name()));
            if let Some(principal) = security.principal() {
                text.push_str(&format!(" as {principal}"));
            }
        }
        if let Some(tls) = &security.tls {
            if tls.certificate_file.is_some() {
                text.push_str(", client certificate");
            }
            if let Some(ca) = &tls.ca_file {
                text.push_str(&format!(", CA {}", self.path(ca).display()));
            }
            if !tls.verify_hostname {
                text.push_str(", host names NOT verified");
            }
        }
        text
    }

    /// Opens every file and secret of `security` as a client would, and checks that this
    /// build supports what it asks for.
    pub fn check(&self) -> Result<(), SecurityError> {
        let properties = self.security_properties()?;
        let builtin = builtin_features();
        let security = &self.security;
        let needs: Vec<(String, &'static str)> = [
            security.protocol.tls().then(|| ("TLS".to_owned(), "ssl")),
            security.sasl.as_ref().map(|s| match s.mechanism {
                SaslMechanism::Plain => (String::from("SASL PLAIN"), "sasl_plain"),
                SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                    (format!("SASL {}", s.mechanism.name()), "sasl_scram")
                }
                SaslMechanism::OauthBearer => ("OAUTHBEARER with OIDC".to_owned(), "oidc"),
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (what, feature) in needs {
            if !builtin.split(',').any(|f| f == feature) {
                return Err(SecurityError::Unsupported {
                    section: self.section.to_owned(),
                    what,
                    feature,
                    builtin,
                });
            }
        }
        let Some(tls) = &security.tls else {
            return Ok(());
        };
        let password = properties
            .iter()
            .find(|(k, _)| *k == "ssl.key.password")
            .map(|(_, v)| v.as_str());
        let pem = |field: &'static str, path: &Path, problem: String| SecurityError::Pem {
            section: self.section.to_owned(),
            field,
            path: path.to_path_buf(),
            problem,
        };
        let read = |field: &'static str, file: &PathBuf| {
            let path = self.path(file);
            std::fs::read(&path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|source| SecurityError::Unreadable {
                    section: self.section.to_owned(),
                    field,
                    path,
                    source,
                })
        };
        let now = openssl::asn1::Asn1Time::days_from_now(0).ok();
        let certificates = |field: &'static str, path: &Path, bytes: &[u8]| {
            let chain = openssl::x509::X509::stack_from_pem(bytes).unwrap_or_default();
            if chain.is_empty() {
                return Err(pem(
                    field,
                    path,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----): point it at the PEM file".into(),
                ));
            }
            if let (Some(now), Some(first)) = (&now, chain.first()) {
                if first.not_after() < now {
                    return Err(pem(
                        field,
                        path,
                        format!("the certificate expired on {}: renew it", first.not_after()),
                    ));
                }
            }
            Ok(chain)
        };
        if let Some(file) = &tls.ca_file {
            let (path, bytes) = read("tls.ca-file", file)?;
            certificates("tls.ca-file", &path, &bytes)?;
        }
        if let (Some(cert), Some(key)) = (&tls.certificate_file, &tls.key_file) {
            let (cert_path, bytes) = read("tls.certificate-file", cert)?;
            let chain = certificates("tls.certificate-file", &cert_path, &bytes)?;
            let (key_path, bytes) = read("tls.key-file", key)?;
            let key = match password {
                Some(password) => openssl::pkey::PKey::private_key_from_pem_passphrase(
                    &bytes,
                    password.as_bytes(),
                )
                .map_err(|_| {
                    pem(
                        "tls.key-file",
                        &key_path,
                        "cannot open the private key with the key password: check key-password-file (or key-password-env) and that the file is a PEM private key".into(),
                    )
                })?,
                None => {
                    if String::from_utf8_lossy(&bytes).contains("ENCRYPTED") {
                        return Err(pem(
                            "tls.key-file",
                            &key_path,
                            "the private key is encrypted: set key-password-file (or key-password-env)".into(),
                        ));
                    }
                    openssl::pkey::PKey::private_key_from_pem(&bytes).map_err(|_| {
                        pem(
                            "tls.key-file",
                            &key_path,
                            "holds no PEM private key (-----BEGIN PRIVATE KEY-----): point it at the key of certificate-file".into(),
                        )
                    })?
                }
            };
            let matches = chain[0]
                .public_key()
                .map(|public| public.public_eq(&key))
                .unwrap_or(false);
            if !matches {
                return Err(pem(
                    "tls.key-file",
                    &key_path,
                    format!(
                        "is not the key of the certificate in {}: use the key issued with it",
                        cert_path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// librdkafka's `builtin.features` (what it was compiled with).
pub fn builtin_features() -> String {
    ClientConfig::new()
        .create_native_config()
        .ok()
        .and_then(|native| native.get("builtin.features").ok())
        .unwrap_or_default()
}

/// The security files of a spec's Kafka connections (passwords, keys, certificates, CAs),
/// watched so that a rotated credential (a Secret updated in place, or a file replaced) leads
/// to new clients: the run drains, commits and starts again with them
/// ([`run`](crate::run::run)). librdkafka reads these files only when a client is made.
#[derive(Debug)]
pub struct SecretWatch {
    files: Vec<PathBuf>,
    seen: Vec<Option<u64>>,
    next: std::time::Instant,
    /// A change seen, and since when the files have stayed as they are now.
    changed: Option<(PathBuf, std::time::Instant)>,
}

impl SecretWatch {
    /// How often the files are read.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    /// How long changed files must stay as they are before they count: a certificate and its
    /// key replaced one after the other (not as a Secret volume's atomic swap) are taken
    /// together.
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    /// Watches every file `security` names on the spec's connections.
    pub fn of(spec: &PipelineSpec) -> SecretWatch {
        let mut files: Vec<PathBuf> = [Connection::Source, Connection::Producer]
            .into_iter()
            .filter_map(|which| Endpoint::of(spec, which))
            .flat_map(|e| {
                e.security
                    .files()
                    .into_iter()
                    .map(|(_, p)| e.path(p))
                    .collect::<Vec<_>>()
            })
            .collect();
        files.sort();
        files.dedup();
        let seen = files.iter().map(|f| fingerprint(f)).collect();
        SecretWatch {
            files,
            seen,
            next: std::time::Instant::now() + Self::EVERY,
            changed: None,
        }
    }

    /// The first watched file whose content changed since the watch began, once the files
    /// have stayed as they are for [`SETTLE`](Self::SETTLE) (read at most every
    /// [`EVERY`](Self::EVERY)); a file missing for a moment (being replaced) is not a change.
    pub fn changed(&mut self) -> Option<&Path> {
        let now = std::time::Instant::now();
        if self.files.is_empty() || now < self.next {
            return None;
        }
        self.next = now + Self::EVERY;
        let mut moved = None;
        for (file, seen) in self.files.iter().zip(self.seen.iter_mut()) {
            let current = fingerprint(file);
            if current.is_some() && current != *seen {
                *seen = current;
                moved.get_or_insert_with(|| file.clone());
            }
        }
        match (moved, &self.changed) {
            (Some(file), None) => self.changed = Some((file, now)),
            (Some(_), Some((file, _))) => self.changed = Some((file.clone(), now)),
            (None, _) => {}
        }
        match &self.changed {
            Some((file, since)) if now.duration_since(*since) >= Self::SETTLE => Some(file),
            _ => None,
        }
    }
}

/// A hash of a file's content (None: unreadable).
fn fingerprint(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_counts_once_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "one").unwrap();
        let mut watch = SecretWatch {
            files: vec![a.clone(), b.clone()],
            seen: vec![fingerprint(&a), fingerprint(&b)],
            next: std::time::Instant::now(),
            changed: None,
        };
        let turn = |watch: &mut SecretWatch| {
            watch.next = std::time::Instant::now();
            watch.changed().map(Path::to_path_buf)
        };
        assert_eq!(turn(&mut watch), None, "nothing changed");
        std::fs::write(&a, "two").unwrap();
        assert_eq!(turn(&mut watch), None, "changed, not settled");
        std::fs::remove_file(&b).unwrap();
        assert_eq!(turn(&mut watch), None, "a missing file is not a change");
        std::fs::write(&b, "two").unwrap();
        // Settled once nothing moved for SETTLE.
        let since = std::time::Instant::now() - SecretWatch::SETTLE;
        watch.changed = watch.changed.take().map(|(f, _)| (f, since));
        assert_eq!(turn(&mut watch), None, "b moved: the clock starts again");
        let since = std::time::Instant::now() - SecretWatch::SETTLE;
        watch.changed = watch.changed.take().map(|(f, _)| (f, since));
        assert_eq!(turn(&mut watch), Some(a));
    }
}
