//! JSON Schema: the data is JSON; decoding and encoding both validate it against the schema.

/// A compiled JSON Schema.
#[derive(Debug)]
pub struct Json {
    validator: jsonschema::Validator,
    title: Option<String>,
}

impl Json {
    /// Compiles `text`.
    pub fn parse(text: &str) -> Result<Json, String> {
        let schema: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(Json {
            title: schema
                .get("title")
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            validator,
        })
    }

    /// The schema's `title` (its record name).
    pub fn record_name(&self) -> Option<String> {
        self.title.clone()
    }

    /// Checks that `data` is JSON that fits the schema.
    pub fn validate(&self, data: &[u8]) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        match self.validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(e) => Err(format!(
                "does not fit the JSON Schema: {e} (at `{}`)",
                e.instance_path()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_validated() {
        let json = Json::parse(
            r#"{"title": "Booking", "type": "object", "required": ["id"],
                "properties": {"id": {"type": "integer"}}}"#,
        )
        .unwrap();
        assert_eq!(json.record_name().as_deref(), Some("Booking"));
        json.validate(br#"{"id": 1}"#).unwrap();
        assert!(
            json.validate(br#"{"id": "x"}"#)
                .unwrap_err()
                .contains("/id")
        );
        assert!(json.validate(b"{").unwrap_err().contains("not JSON"));
    }
}
