//! Avro: a writer schema (with the named types it references) decodes a datum into JSON, and
//! encodes a JSON document that fits it.

use apache_avro::Schema;
use apache_avro::types::Value;

/// A datum's bytes, noting a read past their end: apache-avro 0.21 decodes a string cut short
/// as a null instead of failing.
struct Strict<'a> {
    data: &'a [u8],
    short: bool,
}

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.data.len() {
            self.short = true;
        }
        self.data.read(buf)
    }
}

/// A parsed Avro schema.
#[derive(Debug)]
pub struct Avro {
    schema: Schema,
    /// The named schemas it references, parsed with it.
    named: Vec<Schema>,
}

impl Avro {
    /// Parses `text`, whose references are `references` (their schema texts).
    pub fn parse(text: &str, references: &[String]) -> Result<Avro, String> {
        if references.is_empty() {
            let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
            return Ok(Avro {
                schema,
                named: Vec::new(),
            });
        }
        let (schema, named) =
            Schema::parse_str_with_list(text, references).map_err(|e| e.to_string())?;
        Ok(Avro { schema, named })
    }

    /// The record's full name (`namespace.name`), if the schema is a named type.
    pub fn record_name(&self) -> Option<String> {
        self.schema.name().map(|n| n.fullname(None))
    }

    /// `datum` as a JSON document.
    pub fn decode(&self, datum: &[u8]) -> Result<Vec<u8>, String> {
        let mut reader = Strict {
            data: datum,
            short: false,
        };
        let value = apache_avro::from_avro_datum_schemata(
            &self.schema,
            self.named.iter().collect(),
            &mut reader,
            None,
        )
        .map_err(|e| format!("not an Avro datum of its schema: {e}"))?;
        if reader.short {
            return Err("not an Avro datum of its schema: it ends early".into());
        }
        if !reader.data.is_empty() {
            return Err(format!(
                "not an Avro datum of its schema: {} byte(s) left after the datum",
                reader.data.len()
            ));
        }
        let json = serde_json::Value::try_from(value).map_err(|e| e.to_string())?;
        Ok(serde_json::to_vec(&json).expect("JSON serializes"))
    }

    /// Appends the datum of the JSON document `json` to `out`.
    pub fn encode(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let json: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let value = Value::from(json)
            .resolve_schemata(&self.schema, self.named.iter().collect())
            .map_err(|e| format!("does not fit the Avro schema: {e}"))?;
        let datum =
            apache_avro::to_avro_datum_schemata(&self.schema, self.named.iter().collect(), value)
                .map_err(|e| format!("does not fit the Avro schema: {e}"))?;
        out.extend_from_slice(&datum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKING: &str = r#"{"type": "record", "name": "Booking", "namespace": "rides",
        "fields": [{"name": "id", "type": "long"}, {"name": "city", "type": "string"},
                   {"name": "fare", "type": ["null", "double"], "default": null}]}"#;

    #[test]
    fn a_datum_round_trips_through_json() {
        let avro = Avro::parse(BOOKING, &[]).unwrap();
        assert_eq!(avro.record_name().as_deref(), Some("rides.Booking"));
        let mut datum = Vec::new();
        avro.encode(br#"{"id": 7, "city": "Jakarta", "fare": 12.5}"#, &mut datum)
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&avro.decode(&datum).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "city": "Jakarta", "fare": 12.5})
        );
        // A missing optional field takes its default.
        datum.clear();
        avro.encode(br#"{"id": 8, "city": "Manila"}"#, &mut datum)
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&avro.decode(&datum).unwrap()).unwrap();
        assert_eq!(json["fare"], serde_json::Value::Null);
    }

    #[test]
    fn a_document_that_does_not_fit_is_refused() {
        let avro = Avro::parse(BOOKING, &[]).unwrap();
        let err = avro.encode(br#"{"id": "seven", "city": "Jakarta"}"#, &mut Vec::new());
        assert!(err.unwrap_err().contains("does not fit the Avro schema"));
        let err = avro.encode(br#"{"city": "Jakarta"}"#, &mut Vec::new());
        assert!(err.is_err());
    }

    #[test]
    fn a_truncated_datum_is_refused() {
        let avro = Avro::parse(BOOKING, &[]).unwrap();
        let mut datum = Vec::new();
        avro.encode(br#"{"id": 7, "city": "Jakarta"}"#, &mut datum)
            .unwrap();
        assert!(avro.decode(&datum[..datum.len() - 2]).is_err());
        datum.push(0);
        assert!(avro.decode(&datum).unwrap_err().contains("left after"));
    }
}
