//! The strict check of a Rust plugin's frozen data types: abi_stable compares the plugin's
//! exported layout of `AbiTypes` with ours field by field. Its report runs to hundreds of lines
//! with the cause at the end; [`check`] condenses it to one line naming the type, the field and
//! expected vs found, and keeps the full report for `--verbose`.

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::{
    AbiInstability, AbiInstabilityError, AbiInstabilityErrors, check_layout_compatibility,
};
use abi_stable::type_layout::{TLFieldOrFunction, TypeLayout};
use sluice_plugin_api::abi::AbiTypes;

/// Compares `found` (the plugin's layout) with the host's; `Err((summary, full_report))`.
pub fn check(found: &'static TypeLayout) -> Result<(), (String, String)> {
    let expected = <AbiTypes<'static> as StableAbi>::LAYOUT;
    check_layout_compatibility(expected, found)
        .map_err(|errors| (summarize(&errors), errors.to_string()))
}

fn summarize(errors: &AbiInstabilityErrors) -> String {
    // The deepest error is the cause; the ones above it only say "a field's type differs".
    let Some(error) = errors
        .errors
        .iter()
        .filter(|e| !e.errs.is_empty())
        .max_by_key(|e| e.stack_trace.len())
    else {
        return "the layouts differ (no detail from abi_stable)".into();
    };
    let (path, expected_type, found_type) = locate(error);
    let mut parts: Vec<String> = Vec::new();
    for err in error.errs.iter() {
        let part = match err {
            AbiInstability::FieldCountMismatch(ef) => {
                let names = |layout: Option<&'static TypeLayout>| -> Vec<&'static str> {
                    layout
                        .and_then(|l| l.get_fields())
                        .map(|fields| fields.iter().map(|f| f.name()).collect())
                        .unwrap_or_default()
                };
                let (exp, fnd) = (names(expected_type), names(found_type));
                let added: Vec<_> = fnd
                    .iter()
                    .filter(|n| !exp.contains(n))
                    .map(|n| format!("`{n}`"))
                    .collect();
                let missing: Vec<_> = exp
                    .iter()
                    .filter(|n| !fnd.contains(n))
                    .map(|n| format!("`{n}`"))
                    .collect();
                let mut text = format!("{} fields, expected {}", ef.found, ef.expected);
                if !added.is_empty() {
                    text.push_str(&format!(" (plugin adds {})", added.join(", ")));
                }
                if !missing.is_empty() {
                    text.push_str(&format!(" (plugin lacks {})", missing.join(", ")));
                }
                text
            }
            AbiInstability::UnexpectedField(ef) => {
                format!(
                    "field `{}` where `{}` was expected",
                    ef.found.name(),
                    ef.expected.name()
                )
            }
            AbiInstability::Size(ef) => {
                format!("size {} bytes, expected {}", ef.found, ef.expected)
            }
            AbiInstability::Alignment(ef) => {
                format!("alignment {}, expected {}", ef.found, ef.expected)
            }
            AbiInstability::Name(ef) => format!("type {}, expected {}", ef.found, ef.expected),
            AbiInstability::Package(ef) => {
                format!("defined in package {}, expected {}", ef.found, ef.expected)
            }
            AbiInstability::PackageVersion(ef) => {
                format!(
                    "built against version {}, host has {}",
                    ef.found, ef.expected
                )
            }
            AbiInstability::MismatchedPrimitive(ef) => {
                format!("primitive {:?}, expected {:?}", ef.found, ef.expected)
            }
            other => {
                let text = format!("{other:?}");
                text.chars().take(160).collect()
            }
        };
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    format!("{path}: {}", parts.join("; "))
}

/// "Type (at AbiTypes.field.field)" for the innermost type of an error, with both layouts.
fn locate(
    error: &AbiInstabilityError,
) -> (
    String,
    Option<&'static TypeLayout>,
    Option<&'static TypeLayout>,
) {
    let mut fields = vec!["AbiTypes".to_owned()];
    let (mut expected, mut found) = (None, None);
    for step in error.stack_trace.iter() {
        match (&step.expected, &step.found) {
            (TLFieldOrFunction::Field(exp), TLFieldOrFunction::Field(fnd)) => {
                fields.push(exp.name().to_owned());
                expected = Some(exp.layout());
                found = Some(fnd.layout());
            }
            (TLFieldOrFunction::Function(f), _) | (_, TLFieldOrFunction::Function(f)) => {
                fields.push(format!("fn {}", f.name));
            }
        }
    }
    let type_name = expected.map(|l| l.name()).unwrap_or("AbiTypes");
    (
        format!("type `{type_name}` (at {})", fields.join(".")),
        expected,
        found,
    )
}
