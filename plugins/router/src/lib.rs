//! router: fans JSON events out to named outputs by the value of one field.
//!
//! `field` is a dotted path into the payload (`rider.tier`); `routes` maps its values (strings,
//! or numbers/booleans as text) to output names; several outputs per value fan one event out to
//! each. Events with no route go to `default` when set, and are otherwise a per-event error (the
//! error policy decides), as are events without the field. The event's key, headers and payload
//! pass through unchanged, with an `x-routed-by` header added.

use std::collections::HashMap;

use serde::Deserialize;
use sluice_plugin_api::{
    Context, Error, Event, EventError, Header, Output, Pipeline, Record, export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dotted path of the routing field.
    pub field: String,
    /// Field value -> output name(s).
    pub routes: HashMap<String, OneOrMany>,
    /// Output for values with no route.
    #[serde(default)]
    pub default: Option<String>,
}

/// One output name or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One output.
    One(String),
    /// Several outputs.
    Many(Vec<String>),
}

const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "required": ["field", "routes"],
  "properties": {
    "field": {"type": "string", "minLength": 1},
    "routes": {"type": "object", "minProperties": 1, "additionalProperties": {
      "oneOf": [{"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}]}},
    "default": {"type": "string", "minLength": 1}
  }
}"#;

/// The pipeline.
#[derive(Debug)]
pub struct Router {
    path: Vec<String>,
    field: String,
    routes: HashMap<String, Vec<String>>,
    default: Option<Vec<String>>,
}

impl Router {
    fn value_at<'v>(&self, mut doc: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        for part in &self.path {
            doc = doc.get(part)?;
        }
        Some(doc)
    }
}

impl Pipeline for Router {
    type Config = Config;
    const DESCRIPTION: &'static str = "Routes JSON events to named outputs by the value of a field";
    const CONFIG_SCHEMA: Option<&'static str> = Some(SCHEMA);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        let routes = config
            .routes
            .into_iter()
            .map(|(value, outputs)| match outputs {
                OneOrMany::One(o) => (value, vec![o]),
                OneOrMany::Many(many) => (value, many),
            })
            .collect();
        Ok(Router {
            path: config.field.split('.').map(str::to_owned).collect(),
            field: config.field,
            routes,
            default: config.default.map(|d| vec![d]),
        })
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        let doc: serde_json::Value = serde_json::from_slice(event.payload())?;
        let value = match self.value_at(&doc) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
            _ => {
                return Err(EventError::invalid(format!(
                    "no `{}` field with a string or number value",
                    self.field
                )));
            }
        };
        let outputs = match self.routes.get(&value).or(self.default.as_ref()) {
            Some(outputs) => outputs,
            None => {
                return Err(EventError::failed(format!(
                    "no route for {}={value:?} and no `default` output",
                    self.field
                )));
            }
        };
        let mut headers: Vec<Header<'_>> = event.headers().to_vec();
        headers.push(Header::new("x-routed-by", self.field.as_bytes()));
        for output in outputs {
            let record = Record::to(output).value(event.payload()).headers(&headers);
            out.emit(record.key_opt(event.key()))?;
        }
        Ok(())
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_plugin_api::host::EventErrorKind;
    use sluice_plugin_api::testing::{Harness, TestEvent};

    #[test]
    fn routes_by_nested_field_with_fan_out_and_default() {
        let config = json!({"field": "rider.tier", "routes": {"gold": ["vip", "audit"], "silver": "regular"}, "default": "other"});
        let mut h = Harness::<Router>::open(config).unwrap();
        let out = h
            .process(&[
                TestEvent::json(&json!({"rider": {"tier": "gold"}}))
                    .key("r1")
                    .header("trace", "t1"),
                TestEvent::json(&json!({"rider": {"tier": "silver"}})),
                TestEvent::json(&json!({"rider": {"tier": "bronze"}})),
            ])
            .unwrap();
        let routed: Vec<_> = out.records.iter().map(|r| r.output.as_str()).collect();
        assert_eq!(routed, ["vip", "audit", "regular", "other"]);
        let vip = &out.records[0];
        assert_eq!(vip.key.as_deref(), Some(&b"r1"[..]));
        assert_eq!(
            vip.headers,
            [
                ("trace".into(), b"t1".to_vec()),
                ("x-routed-by".into(), b"rider.tier".to_vec())
            ]
        );
        assert_eq!(vip.json(), json!({"rider": {"tier": "gold"}}));
    }

    #[test]
    fn unroutable_events_are_per_event_errors() {
        let mut h =
            Harness::<Router>::open(json!({"field": "city", "routes": {"SG": "sg", "7": "seven"}}))
                .unwrap();
        let out = h
            .process(&[
                TestEvent::json(&json!({"city": "KL"})),
                TestEvent::json(&json!({"town": "SG"})),
                TestEvent::json(&json!({"city": 7})),
            ])
            .unwrap();
        let errs: Vec<_> = out.errors.iter().map(|e| (e.index, e.kind)).collect();
        assert_eq!(
            errs,
            [
                (0, EventErrorKind::Failed),
                (1, EventErrorKind::InvalidInput)
            ]
        );
        assert!(
            out.errors[0].message.contains("no route for city=\"KL\""),
            "{}",
            out.errors[0].message
        );
        assert_eq!(out.records[0].output, "seven");
    }
}
