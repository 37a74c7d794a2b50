//! How Sluice's Kafka clients connect: `source.kafka.security` (every client of the pipeline:
//! consumer, producer, transactional producer, changelog readers and admin, `state dump`,
//! `dlq replay -f`) and `producer.security` (outputs on another cluster; default: the source's).
//!
//! One typed section instead of librdkafka properties, so `sluice validate` checks it offline
//! (files readable, PEM parsable, a key that opens with its password) and one function builds
//! every client's settings from it. Credentials never sit in the spec: a password, key password
//! or OIDC client secret is read from a file (a mounted Secret) or an environment variable when
//! a client is made.

use std::path::PathBuf;

use serde::Deserialize;

/// `source.kafka.security` / `producer.security`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSecurity {
    /// `plaintext` (the default), `ssl`, `sasl-plaintext` or `sasl-ssl`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// Who the client is, with `sasl-plaintext` and `sasl-ssl`.
    #[serde(default)]
    pub sasl: Option<SaslSpec>,
    /// Encryption and mutual TLS, with `ssl` and `sasl-ssl`. Without it: the system's CA bundle,
    /// the broker's host name verified, no client certificate.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityProtocol {
    /// No encryption, no authentication: a broker that trusts everyone.
    #[default]
    Plaintext,
    /// TLS; with a client certificate, the broker's principal is its subject (mTLS).
    Ssl,
    /// SASL over an unencrypted connection (credentials readable on the wire: tests only).
    SaslPlaintext,
    /// SASL over TLS: what managed Kafka services offer.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections are encrypted.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A SASL login.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SaslSpec {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: SaslMechanism,
    /// The user (PLAIN: a Confluent Cloud API key; SCRAM: the KafkaUser's name).
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (a mounted Secret); one trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// OAUTHBEARER: tokens from an OIDC provider (client credentials grant), fetched and
    /// refreshed by librdkafka.
    #[serde(default)]
    pub oauthbearer: Option<OauthBearerSpec>,
}

/// SASL mechanisms Sluice's librdkafka is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// A user and password, as they are (over TLS only, in production).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens (KIP-768 OIDC).
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    /// Kafka's (and librdkafka's) name.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// OAUTHBEARER through an OIDC token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OauthBearerSpec {
    /// The provider's token endpoint (`https://.../protocol/openid-connect/token`).
    pub token_endpoint_url: String,
    /// The client id.
    pub client_id: String,
    /// A file holding the client secret (a mounted Secret).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The scope asked for (space-separated), if the provider needs one.
    #[serde(default)]
    pub scope: Option<String>,
    /// SASL extensions some services need (Confluent Cloud: `logicalCluster`,
    /// `identityPoolId`).
    #[serde(default)]
    pub extensions: std::collections::BTreeMap<String, String>,
}

/// TLS settings, PEM files relative to the spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSpec {
    /// The CA certificates (a bundle) that sign the brokers' certificates; default: the
    /// system's CA bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// mTLS: the client certificate, with the chain of intermediates that signed it.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// mTLS: the client certificate's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file holding the private key's password, if the key is encrypted.
    #[serde(default)]
    pub key_password_file: Option<PathBuf>,
    /// An environment variable holding the private key's password.
    #[serde(default)]
    pub key_password_env: Option<String>,
    /// Check that the broker's certificate names the host connected to (on by default; off
    /// only for brokers whose certificates name no usable host).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// librdkafka properties a `security` section owns: refused in `properties` beside it.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.extensions",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

impl KafkaSecurity {
    /// Cross-field checks: `Err((field below the section, message))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
        let protocol = self.protocol;
        match (&self.sasl, protocol.sasl()) {
            (None, true) => {
                return bad(
                    "sasl",
                    "protocol sasl-* needs a `sasl` login (mechanism, username, password-file)",
                );
            }
            (Some(_), false) => {
                return bad(
                    "sasl",
                    "is only used with protocol sasl-ssl or sasl-plaintext: set the protocol or remove it",
                );
            }
            _ => {}
        }
        if self.tls.is_some() && !protocol.tls() {
            return bad(
                "tls",
                "is only used with protocol ssl or sasl-ssl: set the protocol or remove it",
            );
        }
        if let Some(sasl) = &self.sasl {
            let password = sasl.password_file.is_some() as u8 + sasl.password_env.is_some() as u8;
            match sasl.mechanism {
                SaslMechanism::OauthBearer => {
                    if sasl.username.is_some() || password > 0 {
                        return bad(
                            "sasl",
                            "OAUTHBEARER takes no username or password: set sasl.oauthbearer (token-endpoint-url, client-id, client-secret-file)",
                        );
                    }
                    let Some(oauth) = &sasl.oauthbearer else {
                        return bad(
                            "sasl.oauthbearer",
                            "OAUTHBEARER needs the OIDC provider: token-endpoint-url, client-id and client-secret-file",
                        );
                    };
                    if !oauth.token_endpoint_url.starts_with("https://")
                        && !oauth.token_endpoint_url.starts_with("http://")
                    {
                        return bad(
                            "sasl.oauthbearer.token-endpoint-url",
                            "must be an http(s) URL",
                        );
                    }
                    match (&oauth.client_secret_file, &oauth.client_secret_env) {
                        (Some(_), Some(_)) => {
                            return bad(
                                "sasl.oauthbearer",
                                "set client-secret-file or client-secret-env, not both",
                            );
                        }
                        (None, None) => {
                            return bad(
                                "sasl.oauthbearer",
                                "needs client-secret-file (a mounted Secret) or client-secret-env",
                            );
                        }
                        _ => {}
                    }
                }
                _ => {
                    if sasl.oauthbearer.is_some() {
                        return bad(
                            "sasl.oauthbearer",
                            "is only used with mechanism OAUTHBEARER: remove it",
                        );
                    }
                    if sasl.username.as_deref().is_none_or(str::is_empty) {
                        return bad("sasl.username", "needs a user name");
                    }
                    match password {
                        0 => {
                            return bad(
                                "sasl",
                                "needs password-file (a mounted Secret) or password-env; a password is never written in the spec",
                            );
                        }
                        2 => return bad("sasl", "set password-file or password-env, not both"),
                        _ => {}
                    }
                }
            }
        }
        if let Some(tls) = &self.tls {
            if tls.certificate_file.is_some() != tls.key_file.is_some() {
                return bad(
                    "tls",
                    "a client certificate needs both certificate-file and key-file",
                );
            }
            let password =
                tls.key_password_file.is_some() as u8 + tls.key_password_env.is_some() as u8;
            if password > 0 && tls.key_file.is_none() {
                return bad(
                    "tls",
                    "key-password-file or key-password-env without key-file: remove it or add the key",
                );
            }
            if password == 2 {
                return bad("tls", "set key-password-file or key-password-env, not both");
            }
        }
        Ok(())
    }

    /// Every file the section names (field below the section, path as written).
    pub fn files(&self) -> Vec<(&'static str, &PathBuf)> {
        let mut files = Vec::new();
        if let Some(sasl) = &self.sasl {
            files.extend(
                sasl.password_file
                    .as_ref()
                    .map(|p| ("sasl.password-file", p)),
            );
            if let Some(oauth) = &sasl.oauthbearer {
                files.extend(
                    oauth
                        .client_secret_file
                        .as_ref()
                        .map(|p| ("sasl.oauthbearer.client-secret-file", p)),
                );
            }
        }
        if let Some(tls) = &self.tls {
            files.extend(tls.ca_file.as_ref().map(|p| ("tls.ca-file", p)));
            files.extend(
                tls.certificate_file
                    .as_ref()
                    .map(|p| ("tls.certificate-file", p)),
            );
            files.extend(tls.key_file.as_ref().map(|p| ("tls.key-file", p)));
            files.extend(
                tls.key_password_file
                    .as_ref()
                    .map(|p| ("tls.key-password-file", p)),
            );
        }
        files
    }

    /// The principal the broker sees, as far as the spec tells: `User:NAME` for PLAIN and
    /// SCRAM; None for mTLS (the certificate's subject) and OAUTHBEARER (the token's `sub`).
    pub fn principal(&self) -> Option<String> {
        let sasl = self.sasl.as_ref()?;
        match sasl.mechanism {
            SaslMechanism::OauthBearer => None,
            _ => sasl.username.as_ref().map(|u| format!("User:{u}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> KafkaSecurity {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn problem(yaml: &str) -> String {
        let (field, message) = parse(yaml).check().unwrap_err();
        format!("{field}: {message}")
    }

    #[test]
    fn the_default_is_plaintext_and_tls_verifies_host_names() {
        let security = parse("{}");
        assert_eq!(security.protocol, SecurityProtocol::Plaintext);
        assert!(security.check().is_ok());
        let security = parse("protocol: ssl\ntls: {ca-file: ca.crt}\n");
        assert!(security.tls.unwrap().verify_hostname);
    }

    #[test]
    fn complete_logins_pass() {
        for yaml in [
            "protocol: sasl-ssl\nsasl: {mechanism: SCRAM-SHA-512, username: a, password-file: p}\n",
            "protocol: sasl-ssl\nsasl: {mechanism: PLAIN, username: key, password-env: SECRET}\ntls: {ca-file: ca.crt}\n",
            "protocol: ssl\ntls: {ca-file: ca.crt, certificate-file: c.crt, key-file: c.key, key-password-file: kp}\n",
            "protocol: sasl-ssl\nsasl: {mechanism: OAUTHBEARER, oauthbearer: {token-endpoint-url: 'https://idp/token', client-id: c, client-secret-file: s}}\n",
        ] {
            assert_eq!(parse(yaml).check(), Ok(()), "{yaml}");
        }
    }

    #[test]
    fn each_inconsistency_is_named() {
        let cases = [
            ("protocol: sasl-ssl\n", "sasl: protocol sasl-* needs"),
            (
                "sasl: {mechanism: PLAIN, username: a, password-env: P}\n",
                "sasl: is only used with protocol",
            ),
            (
                "protocol: sasl-plaintext\nsasl: {mechanism: PLAIN, username: a, password-env: P}\ntls: {ca-file: x}\n",
                "tls: is only used with protocol ssl",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: SCRAM-SHA-256, username: a}\n",
                "sasl: needs password-file",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: SCRAM-SHA-256, password-env: P}\n",
                "sasl.username: needs a user name",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: PLAIN, username: a, password-env: P, password-file: f}\n",
                "not both",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: OAUTHBEARER}\n",
                "sasl.oauthbearer: OAUTHBEARER needs the OIDC provider",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: OAUTHBEARER, username: a}\n",
                "OAUTHBEARER takes no username",
            ),
            (
                "protocol: sasl-ssl\nsasl: {mechanism: OAUTHBEARER, oauthbearer: {token-endpoint-url: 'idp', client-id: c, client-secret-env: S}}\n",
                "token-endpoint-url: must be an http(s) URL",
            ),
            (
                "protocol: ssl\ntls: {certificate-file: c.crt}\n",
                "needs both certificate-file and key-file",
            ),
            (
                "protocol: ssl\ntls: {key-password-env: P}\n",
                "without key-file",
            ),
        ];
        for (yaml, expected) in cases {
            let got = problem(yaml);
            assert!(got.contains(expected), "{yaml}: {got}");
        }
    }

    #[test]
    fn unknown_mechanisms_and_fields_are_refused() {
        let err = serde_yaml_ng::from_str::<KafkaSecurity>(
            "protocol: sasl-ssl\nsasl: {mechanism: GSSAPI, username: a}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `GSSAPI`"), "{err}");
        let err = serde_yaml_ng::from_str::<KafkaSecurity>("protocol: ssl\ntls: {password: x}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `password`"), "{err}");
    }

    #[test]
    fn the_principal_comes_from_the_user_name() {
        let security = parse(
            "protocol: sasl-ssl\nsasl: {mechanism: SCRAM-SHA-512, username: orders, password-file: p}\n",
        );
        assert_eq!(security.principal().as_deref(), Some("User:orders"));
        assert_eq!(parse("protocol: ssl\n").principal(), None);
    }
}
