//! Schema-registry formats: values in the Confluent wire format (a magic byte 0, the schema id
//! as 4 big-endian bytes, for Protobuf the message indexes, then the Avro datum, Protobuf
//! message or JSON document). A source's [`Decoder`] turns each value into JSON before the
//! plugin sees it (on the worker thread, in `worker.rs`); an output's [`Encoder`] turns each JSON
//! record value into the wire format (in the emitter). Schemas come from the registry by id and
//! stay cached for the life of the process ([`Schemas`]); ids are immutable in a registry.
//!
//! Errors come in two kinds, which the worker treats differently: the registry cannot be used
//! (unreachable, refusing, a TLS failure: the event waits, nothing past it is committed) or the
//! value is wrong for good (no magic byte, an id the registry does not know, a payload its
//! schema does not decode): the `invalid-input` policy.

pub mod avro;
pub mod json;
pub mod protobuf;
pub mod registry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use sluice_plugin_api::abi::{RAW_VALUE_HEADER, SCHEMA_ID_HEADER};

use crate::config::{KafkaOutputSpec, SubjectNameStrategy, ValueFormat};
use crate::sync::lock;
use registry::{RegisteredSchema, Registry, RegistryError};

/// Whether a header is one the host adds to decoded events (the schema id, the raw value):
/// outputs and dead letters do not carry them.
pub fn is_decoding_header(key: &str) -> bool {
    key == SCHEMA_ID_HEADER || key == RAW_VALUE_HEADER
}

/// The wire format's first byte.
pub const MAGIC: u8 = 0;

/// Why a value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The registry cannot be used right now (no answer, a server error, a refusal such as an
    /// expired credential, a TLS failure): the event waits for it. Only the value can be wrong
    /// for good, never the registry: dead-lettering every event while it is down would lose
    /// nothing but send the whole stream to the dead letters.
    #[error("{0}")]
    Unavailable(RegistryError),
    /// The value is wrong for good: the `invalid-input` policy.
    #[error("{0}")]
    Invalid(String),
}

/// A parsed schema.
#[derive(Debug)]
pub enum Parsed {
    /// Avro.
    Avro(avro::Avro),
    /// Protobuf.
    Protobuf(protobuf::Protobuf),
    /// JSON Schema.
    Json(json::Json),
}

impl Parsed {
    fn format(&self) -> ValueFormat {
        match self {
            Parsed::Avro(_) => ValueFormat::Avro,
            Parsed::Protobuf(_) => ValueFormat::Protobuf,
            Parsed::Json(_) => ValueFormat::JsonSchema,
        }
    }

    /// The record name of the subject naming strategies.
    fn record_name(&self) -> Option<String> {
        match self {
            Parsed::Avro(a) => a.record_name(),
            Parsed::Protobuf(p) => p.record_name(),
            Parsed::Json(j) => j.record_name(),
        }
    }

    /// Parses a registry schema whose references are `references` (name, text).
    pub fn parse(
        schema: &RegisteredSchema,
        references: &[(String, String)],
    ) -> Result<Parsed, String> {
        match schema.schema_type.as_str() {
            "AVRO" => {
                let texts: Vec<String> = references.iter().map(|(_, t)| t.clone()).collect();
                avro::Avro::parse(&schema.schema, &texts).map(Parsed::Avro)
            }
            "PROTOBUF" => {
                protobuf::Protobuf::parse(&schema.schema, references).map(Parsed::Protobuf)
            }
            "JSON" => {
                if !references.is_empty() {
                    return Err(
                        "JSON Schema references are not supported: inline the referenced schemas"
                            .into(),
                    );
                }
                json::Json::parse(&schema.schema).map(Parsed::Json)
            }
            other => Err(format!(
                "schema type `{other}` is not AVRO, PROTOBUF or JSON"
            )),
        }
    }

    /// The registry's type name of `format`.
    fn type_name(format: ValueFormat) -> &'static str {
        match format {
            ValueFormat::Avro | ValueFormat::Raw => "AVRO",
            ValueFormat::Protobuf => "PROTOBUF",
            ValueFormat::JsonSchema => "JSON",
        }
    }
}

/// The registry and the schemas read from it, by id; shared by every worker.
#[derive(Debug)]
pub struct Schemas {
    registry: Registry,
    by_id: Mutex<HashMap<u32, Arc<Parsed>>>,
    /// Whether the registry answered the last time it was asked (readiness).
    reachable: Arc<AtomicBool>,
    /// The run is stopping: workers waiting for the registry stop waiting.
    given_up: AtomicBool,
}

impl Schemas {
    /// Schemas read through `registry`.
    pub fn new(registry: Registry) -> Schemas {
        Schemas {
            registry,
            by_id: Mutex::default(),
            reachable: Arc::new(AtomicBool::new(true)),
            given_up: AtomicBool::new(false),
        }
    }

    /// Whether the registry answered the last time it was asked.
    pub fn reachable(&self) -> &Arc<AtomicBool> {
        &self.reachable
    }

    /// The drain is over: events waiting for the registry are left unprocessed (and their
    /// offsets uncommitted), so their workers can stop.
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::Release);
    }

    /// Whether [`Schemas::give_up`] was called.
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Schema `id`: cached, or read from the registry with everything it references (the lock is
    /// not held while the registry is asked).
    pub fn by_id(&self, id: u32) -> Result<Arc<Parsed>, DecodeError> {
        if let Some(parsed) = lock(&self.by_id).get(&id) {
            return Ok(parsed.clone());
        }
        let fail = |e: RegistryError| match e {
            e @ RegistryError::NotFound { .. } => DecodeError::Invalid(e.to_string()),
            e => DecodeError::Unavailable(e),
        };
        let schema = self.registry.schema(id).map_err(fail)?;
        let references = self.references(&schema).map_err(fail)?;
        let parsed = Parsed::parse(&schema, &references)
            .map_err(|e| DecodeError::Invalid(format!("schema id {id}: {e}")))?;
        let parsed = Arc::new(parsed);
        lock(&self.by_id).insert(id, parsed.clone());
        Ok(parsed)
    }

    /// The texts of everything `schema` references, depth first (name, text).
    fn references(
        &self,
        schema: &RegisteredSchema,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut stack: Vec<registry::Reference> = schema.references.clone();
        while let Some(reference) = stack.pop() {
            if out.iter().any(|(name, _)| *name == reference.name) || out.len() > 256 {
                continue;
            }
            let (_, referenced) = self
                .registry
                .version(&reference.subject, &reference.version.to_string())?;
            stack.extend(referenced.references.iter().cloned());
            out.push((reference.name, referenced.schema));
        }
        Ok(out)
    }
}

/// A decoded value: the schema id, and the JSON the plugin sees.
#[derive(Debug)]
pub enum Decoded {
    /// JSON produced from the value.
    Json(Vec<u8>),
    /// The value's own bytes from this index on are the JSON (JSON Schema).
    Tail(usize),
}

/// Decodes a source's values.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: ValueFormat,
    schemas: Arc<Schemas>,
}

/// Splits a wire-format value into its schema id and the rest.
pub fn split(value: &[u8]) -> Result<(u32, &[u8]), String> {
    match value {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [] => Err("an empty value: not the Confluent wire format".into()),
        [MAGIC, ..] => Err(format!(
            "{} bytes: too short for the Confluent wire format",
            value.len()
        )),
        [other, ..] => Err(format!(
            "the first byte is {other:#04x}, not the Confluent wire format's magic byte 0 (was it produced without the registry's serializer?)"
        )),
    }
}

impl Decoder {
    /// A decoder of `format` values.
    pub fn new(format: ValueFormat, schemas: Arc<Schemas>) -> Decoder {
        Decoder { format, schemas }
    }

    /// The schemas it reads.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    /// The schema id and JSON of `value`.
    pub fn decode(&self, value: &[u8]) -> Result<(u32, Decoded), DecodeError> {
        let (id, mut data) = split(value).map_err(DecodeError::Invalid)?;
        let parsed = self.schemas.by_id(id)?;
        let invalid = |e: String| DecodeError::Invalid(format!("schema id {id}: {e}"));
        if parsed.format() != self.format {
            return Err(invalid(format!(
                "a {} schema, and the source reads `format: {}`",
                Parsed::type_name(parsed.format()),
                self.format.name()
            )));
        }
        let json = match &*parsed {
            Parsed::Avro(a) => a.decode(data).map_err(invalid)?,
            Parsed::Protobuf(p) => {
                let indexes = protobuf::read_indexes(&mut data).map_err(invalid)?;
                let message = p.message_at(&indexes).map_err(invalid)?;
                protobuf::decode(&message, data).map_err(invalid)?
            }
            Parsed::Json(j) => {
                j.validate(data).map_err(invalid)?;
                return Ok((id, Decoded::Tail(value.len() - data.len())));
            }
        };
        Ok((id, Decoded::Json(json)))
    }
}

/// Encodes an output's record values with one schema of the registry.
#[derive(Debug)]
pub struct Encoder {
    /// Magic byte, schema id and (Protobuf) message indexes.
    header: Vec<u8>,
    schema: Arc<Parsed>,
    message: Option<prost_reflect::MessageDescriptor>,
    /// The subject and id, for messages.
    pub subject: String,
    /// The schema id.
    pub id: u32,
}

/// Why an output's schema could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("output `{output}`: {message}")]
pub struct EncoderError {
    /// The output.
    pub output: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl Encoder {
    /// The encoder of output `name`: its schema file registered (or looked up) under its
    /// subject, or the subject's latest version.
    pub fn new(
        name: &str,
        spec: &KafkaOutputSpec,
        base_dir: &std::path::Path,
        schemas: &Schemas,
    ) -> Result<Encoder, EncoderError> {
        let fail = |message: String| EncoderError {
            output: name.to_owned(),
            message,
        };
        let registry = schemas.registry();
        let (subject, id, parsed) = match &spec.schema {
            Some(file) => {
                let path = base_dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| fail(format!("schema {}: {e}", path.display())))?;
                let registered = RegisteredSchema {
                    schema_type: Parsed::type_name(spec.format).to_owned(),
                    schema: text,
                    references: Vec::new(),
                };
                let parsed = Parsed::parse(&registered, &[])
                    .map_err(|e| fail(format!("schema {}: {e}", path.display())))?;
                let subject = subject(spec, &parsed).map_err(&fail)?;
                let id = if spec.auto_register {
                    registry.register(&subject, &registered)
                } else {
                    registry.lookup(&subject, &registered)
                }
                .map_err(|e| match e {
                    RegistryError::NotFound { .. } => fail(format!(
                        "subject `{subject}` does not have the schema {}: register it, or set `auto-register: true`",
                        path.display()
                    )),
                    e => fail(e.to_string()),
                })?;
                (subject, id, Arc::new(parsed))
            }
            None => {
                let subject = spec
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("{}-value", spec.topic));
                let (id, _) = registry.version(&subject, "latest").map_err(|e| match e {
                    RegistryError::NotFound { .. } => fail(format!(
                        "subject `{subject}` has no schema in {}: register one, or set `schema: FILE`",
                        registry.url()
                    )),
                    e => fail(e.to_string()),
                })?;
                let parsed = schemas.by_id(id).map_err(|e| fail(e.to_string()))?;
                (subject, id, parsed)
            }
        };
        if parsed.format() != spec.format {
            return Err(fail(format!(
                "subject `{subject}` holds a {} schema (id {id}), and the output writes `format: {}`",
                Parsed::type_name(parsed.format()),
                spec.format.name()
            )));
        }
        let mut header = vec![MAGIC];
        header.extend_from_slice(&id.to_be_bytes());
        let message = match &*parsed {
            Parsed::Protobuf(p) => {
                let (message, indexes) = p.message(spec.message.as_deref()).map_err(&fail)?;
                protobuf::write_indexes(&indexes, &mut header);
                Some(message)
            }
            _ => None,
        };
        Ok(Encoder {
            header,
            schema: parsed,
            message,
            subject,
            id,
        })
    }

    /// The wire-format bytes of the JSON document `json`, or why it does not fit the schema.
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(self.header.len() + json.len());
        out.extend_from_slice(&self.header);
        match (&*self.schema, &self.message) {
            (Parsed::Avro(a), _) => a.encode(json, &mut out)?,
            (Parsed::Protobuf(_), Some(message)) => protobuf::encode(message, json, &mut out)?,
            (Parsed::Json(j), _) => {
                j.validate(json)?;
                out.extend_from_slice(json);
            }
            (Parsed::Protobuf(_), None) => unreachable!("a Protobuf encoder has its message"),
        }
        Ok(out)
    }
}

/// The subject `spec` names for `schema`.
fn subject(spec: &KafkaOutputSpec, schema: &Parsed) -> Result<String, String> {
    if let Some(subject) = &spec.subject {
        return Ok(subject.clone());
    }
    let record = || {
        schema.record_name().ok_or_else(|| {
            "the schema has no record name (an Avro named type, a Protobuf message, a JSON Schema `title`) for `subject-name-strategy`: set `subject`".to_owned()
        })
    };
    Ok(match spec.subject_name_strategy {
        SubjectNameStrategy::TopicName => format!("{}-value", spec.topic),
        SubjectNameStrategy::RecordName => record()?,
        SubjectNameStrategy::TopicRecordName => format!("{}-{}", spec.topic, record()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_header_is_split_off() {
        assert_eq!(split(&[0, 0, 0, 1, 2, 9]).unwrap(), (258, &[9][..]));
        assert!(split(b"{\"a\":1}").unwrap_err().contains("magic byte"));
        assert!(split(&[0, 1]).unwrap_err().contains("too short"));
        assert!(split(&[]).unwrap_err().contains("empty"));
    }

    fn output(strategy: SubjectNameStrategy, subject: Option<&str>) -> KafkaOutputSpec {
        KafkaOutputSpec {
            topic: "rides".into(),
            format: ValueFormat::Avro,
            subject: subject.map(Into::into),
            subject_name_strategy: strategy,
            schema: None,
            message: None,
            auto_register: true,
        }
    }

    #[test]
    fn subjects_follow_the_naming_strategies() {
        let schema = Parsed::Avro(
            avro::Avro::parse(
                r#"{"type": "record", "name": "Booking", "namespace": "rides", "fields": []}"#,
                &[],
            )
            .unwrap(),
        );
        let name = |s, subject| subject_of(&output(s, subject), &schema);
        assert_eq!(name(SubjectNameStrategy::TopicName, None), "rides-value");
        assert_eq!(name(SubjectNameStrategy::RecordName, None), "rides.Booking");
        assert_eq!(
            name(SubjectNameStrategy::TopicRecordName, None),
            "rides-rides.Booking"
        );
        assert_eq!(name(SubjectNameStrategy::RecordName, Some("mine")), "mine");
        let unnamed = Parsed::Avro(avro::Avro::parse(r#""string""#, &[]).unwrap());
        assert!(subject(&output(SubjectNameStrategy::RecordName, None), &unnamed).is_err());
    }

    fn subject_of(spec: &KafkaOutputSpec, schema: &Parsed) -> String {
        subject(spec, schema).unwrap()
    }
}
