//! Why Kafka refused a client, said so that a user can act on it: which principal, which
//! resource or credential, and what to do. [`classify`] is pure (an error code and librdkafka's
//! reason in, a [`Refusal`] out); [`AccessReporter`] sits in the clients' contexts and turns a
//! refusal into the `KafkaAccessDenied` event (one ERROR line per distinct refusal, the
//! `AccessDenied` condition, `/readyz` failing, `sluice_kafka_access_denied_total`).
//!
//! librdkafka keeps retrying after such an error, so a refusal that an admin fixes (an ACL
//! added, a SCRAM user created) clears by itself: the condition lapses once the refusal has not
//! recurred for [`Health::ACCESS_DENIED_FOR`](crate::status::Health::ACCESS_DENIED_FOR).

use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sluice_spec::security::{KafkaSecurity, SaslMechanism};

use crate::telemetry::{KafkaAccessDenied, Telemetry};

/// What kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The broker did not accept the login (wrong password, unknown user, expired token).
    Authentication,
    /// The TLS handshake failed (untrusted CA, host name mismatch, client certificate refused).
    Tls,
    /// The principal lacks an ACL.
    Authorization,
}

impl RefusalKind {
    /// The metric's `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::Authentication => "authentication",
            RefusalKind::Tls => "tls",
            RefusalKind::Authorization => "authorization",
        }
    }
}

/// A refusal, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind.
    pub kind: RefusalKind,
    /// What it is about, short and stable (the condition's subject, the dedup key):
    /// `group sec-g`, `topic out`, `login`, `tls`.
    pub subject: String,
    /// The one line a user reads.
    pub message: String,
}

/// Who a client is and what it works on, for the messages.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// `source.kafka` or `producer`.
    pub section: &'static str,
    /// The spec file, for `sluice acls -f`.
    pub spec_file: String,
    /// How the broker knows the client: `User:orders (SCRAM-SHA-512)`.
    pub principal: String,
    /// The consumer group, for a consumer.
    pub group: Option<String>,
    /// The transactional id, for a transactional producer.
    pub transactional_id: Option<String>,
}

impl ClientIdentity {
    /// The identity of a client connecting with `security`.
    pub fn new(section: &'static str, spec_file: &str, security: &KafkaSecurity) -> Self {
        let principal = match (&security.sasl, security.tls.as_ref()) {
            (Some(sasl), _) if sasl.mechanism == SaslMechanism::OauthBearer => {
                "the OAUTHBEARER token's subject".to_owned()
            }
            (Some(sasl), _) => format!(
                "User:{} ({})",
                sasl.username.as_deref().unwrap_or("?"),
                sasl.mechanism.name()
            ),
            (None, Some(tls)) if tls.certificate_file.is_some() => {
                "the client certificate's subject, User:CN=... (mTLS)".to_owned()
            }
            _ => "User:ANONYMOUS (no authentication)".to_owned(),
        };
        ClientIdentity {
            section,
            spec_file: spec_file.to_owned(),
            principal,
            group: None,
            transactional_id: None,
        }
    }
}

/// The text after `marker` up to the next `:` or end, trimmed (`Subscribed topic not
/// available: in: Broker: ...` -> `in`).
fn after<'a>(reason: &'a str, marker: &str) -> Option<&'a str> {
    let at = reason.find(marker)? + marker.len();
    let rest = &reason[at..];
    Some(rest.split(':').next().unwrap_or(rest).trim()).filter(|s| !s.is_empty())
}

/// The refusal of `operation` on `resource` (`topic t`) to `who`.
pub fn denied(who: &ClientIdentity, operation: &str, resource: String) -> Refusal {
    Refusal {
        kind: RefusalKind::Authorization,
        message: format!(
            "{}: Kafka denies {} {operation} on {resource}: allow it ({})",
            who.section,
            who.principal,
            fix(who)
        ),
        subject: resource,
    }
}

fn fix(who: &ClientIdentity) -> String {
    format!(
        "`sluice acls -f {} --apply` adds every ACL the pipeline needs",
        who.spec_file
    )
}

/// Explains `code` with librdkafka's `reason`, if it is a refusal.
pub fn classify(code: RDKafkaErrorCode, reason: &str, who: &ClientIdentity) -> Option<Refusal> {
    let section = who.section;
    let principal = &who.principal;
    let fix = fix(who);
    let denied = |resource: String, operation: &str| denied(who, operation, resource);
    match code {
        RDKafkaErrorCode::GroupAuthorizationFailed => {
            let group = who.group.clone().unwrap_or_else(|| "its group".into());
            Some(denied(format!("group {group}"), "Read"))
        }
        RDKafkaErrorCode::TopicAuthorizationFailed => {
            let topic = after(reason, "Subscribed topic not available:")
                .or_else(|| after(reason, "topic"))
                .unwrap_or("a topic");
            let operation = if section == "producer" {
                "Write"
            } else {
                "Read"
            };
            Some(denied(format!("topic {topic}"), operation))
        }
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            let id = who.transactional_id.clone().unwrap_or_default();
            Some(denied(format!("transactional id {id}"), "Write"))
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => Some(Refusal {
            kind: RefusalKind::Authorization,
            subject: "cluster".into(),
            message: format!(
                "{section}: Kafka denies {principal} a producer id (ClusterAuthorizationFailed): an idempotent producer needs Write on at least one topic it produces to ({fix})"
            ),
        }),
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            let hint = if reason.contains("expired") || reason.contains("token") {
                "the token was refused: check the OIDC client's id, secret and scope, and that the broker trusts its issuer"
            } else {
                "check the user name and password-file (Kafka answers the same for an unknown user and a wrong password)"
            };
            Some(Refusal {
                kind: RefusalKind::Authentication,
                subject: "login".into(),
                message: format!(
                    "{section}: Kafka refused the login of {principal}: {hint} ({})",
                    short(reason)
                ),
            })
        }
        RDKafkaErrorCode::SSL => {
            let hint = if reason.contains("certificate verify failed") {
                "the broker's certificate is not trusted, or does not name the host in bootstrap-servers: set security.tls.ca-file to the CA that signed it, and connect by a name the certificate carries"
            } else if reason.contains("alert") || reason.contains("certificate required") {
                "the broker refused the client certificate: check that security.tls.certificate-file is signed by a CA the broker trusts and has not expired"
            } else {
                "check security.tls (ca-file, certificate-file, key-file) and that the broker listens with TLS on that port"
            };
            Some(Refusal {
                kind: RefusalKind::Tls,
                subject: "tls".into(),
                message: format!(
                    "{section}: TLS with Kafka failed: {hint} ({})",
                    short(reason)
                ),
            })
        }
        _ => None,
    }
}

/// librdkafka's reason without its broker prefix and timing suffix.
fn short(reason: &str) -> &str {
    let reason = reason
        .split_once("/bootstrap: ")
        .map_or(reason, |(_, rest)| rest);
    reason.split(" (after ").next().unwrap_or(reason).trim()
}

/// Reports refusals of one client: held by its librdkafka context.
#[derive(Debug, Clone)]
pub struct AccessReporter {
    who: ClientIdentity,
    telemetry: Arc<Telemetry>,
}

impl AccessReporter {
    /// A reporter for the client `who`.
    pub fn new(who: ClientIdentity, telemetry: Arc<Telemetry>) -> Self {
        AccessReporter { who, telemetry }
    }

    /// The refusal behind a failed delivery to `topic`, reported, if it is one.
    pub fn delivery_refused(&self, error: &KafkaError, topic: &str) -> Option<Refusal> {
        // The record's topic is the resource: no reason text to read it from.
        let refusal = match error.rdkafka_error_code()? {
            RDKafkaErrorCode::TopicAuthorizationFailed => {
                denied(&self.who, "Write", format!("topic {topic}"))
            }
            code => classify(code, "", &self.who)?,
        };
        self.telemetry.emit(KafkaAccessDenied {
            client: self.who.section,
            refusal: &refusal,
        });
        Some(refusal)
    }

    /// Explains an error of a call that failed outright (creating a transactional producer).
    pub fn explain(&self, error: &KafkaError) -> Option<String> {
        let reason = error.to_string();
        classify(error.rdkafka_error_code()?, &reason, &self.who).map(|r| r.message)
    }

    /// A librdkafka log line: a transaction that could not add a partition because the topic is
    /// not authorized (`ADDPARTS`) names the topic only here, so it is reported from here and
    /// returned; every line is logged as rdkafka's default does.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) -> Option<Refusal> {
        let refusal = (fac == "ADDPARTS" && message.contains("Topic authorization failed"))
            .then(|| message.split('"').nth(1))
            .flatten()
            .map(|topic| denied(&self.who, "Write", format!("topic {topic}")));
        match (&refusal, level) {
            (Some(refusal), _) => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}");
                self.telemetry.emit(KafkaAccessDenied {
                    client: self.who.section,
                    refusal,
                });
            }
            (
                None,
                RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error,
            ) => tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}"),
            (None, RDKafkaLogLevel::Warning) => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            (None, RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info) => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            (None, RDKafkaLogLevel::Debug) => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
        refusal
    }

    /// If `error` is a refusal, reports it and returns true.
    pub fn report(&self, error: &KafkaError, reason: &str) -> bool {
        let Some(code) = error.rdkafka_error_code() else {
            return false;
        };
        // A refused login or handshake leaves no broker connection: librdkafka's "all brokers
        // down" that follows says nothing new.
        if code == RDKafkaErrorCode::AllBrokersDown
            && self
                .telemetry
                .health
                .refusals()
                .iter()
                .any(|(subject, _)| subject == "login" || subject == "tls")
        {
            tracing::debug!("librdkafka: {error}: {reason}");
            return true;
        }
        match classify(code, reason, &self.who) {
            Some(refusal) => {
                self.telemetry.emit(KafkaAccessDenied {
                    client: self.who.section,
                    refusal: &refusal,
                });
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(section: &'static str) -> ClientIdentity {
        ClientIdentity {
            section,
            spec_file: "p.yaml".into(),
            principal: "User:orders (SCRAM-SHA-512)".into(),
            group: Some("g".into()),
            transactional_id: Some("tx-1".into()),
        }
    }

    #[test]
    fn authorization_names_the_principal_the_resource_and_the_operation() {
        let r = classify(
            RDKafkaErrorCode::GroupAuthorizationFailed,
            "FindCoordinator response error: Group authorization failed.",
            &who("source.kafka"),
        )
        .unwrap();
        assert_eq!(r.subject, "group g");
        assert_eq!(
            r.message,
            "source.kafka: Kafka denies User:orders (SCRAM-SHA-512) Read on group g: allow it (`sluice acls -f p.yaml --apply` adds every ACL the pipeline needs)"
        );
        let r = classify(
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "Subscribed topic not available: rides: Broker: Topic authorization failed",
            &who("source.kafka"),
        )
        .unwrap();
        assert_eq!(r.subject, "topic rides");
        assert!(r.message.contains("Read on topic rides"), "{}", r.message);
        let r = classify(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            "",
            &who("producer"),
        )
        .unwrap();
        assert!(
            r.message.contains("Write on transactional id tx-1"),
            "{}",
            r.message
        );
    }

    #[test]
    fn logins_and_tls_say_what_to_check() {
        let r = classify(
            RDKafkaErrorCode::Authentication,
            "sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 321ms in state AUTH_REQ)",
            &who("source.kafka"),
        )
        .unwrap();
        assert_eq!(r.kind, RefusalKind::Authentication);
        assert!(r.message.contains("password-file"), "{}", r.message);
        assert!(r.message.ends_with("SCRAM-SHA-512)"), "{}", r.message);
        let r = classify(
            RDKafkaErrorCode::SSL,
            "sasl_ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
            &who("source.kafka"),
        )
        .unwrap();
        assert_eq!(r.kind, RefusalKind::Tls);
        assert!(r.message.contains("ca-file"), "{}", r.message);
        assert!(classify(RDKafkaErrorCode::AllBrokersDown, "", &who("producer")).is_none());
    }
}
