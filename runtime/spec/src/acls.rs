//! The Kafka ACLs a pipeline needs, derived from its spec alone (`sluice acls`): least
//! privilege for the pipeline's own principal under an authorizer that denies what no ACL
//! allows (`allow.everyone.if.no.acl.found=false`).
//!
//! What each feature asks of the broker, and the ACL that allows it (Kafka's implied
//! operations: Read, Write, Delete and Alter each imply Describe):
//! - consuming the input topics as the group: Read on each topic, Read on the group (joining,
//!   committing, and `TxnOffsetCommit` under exactly-once);
//! - Kafka outputs and the dead-letter topic: Write on each topic (an idempotent producer needs
//!   nothing more since Kafka 3.0, KIP-679: no IdempotentWrite on the cluster);
//! - exactly-once: Write on the transactional id (prefixed when the id is built from a
//!   variable such as `${POD_NAME}`);
//! - state with changelogs: Create, Read and Write on each changelog topic
//!   (`<group>-<topic>-<store>-changelog`); restores and `state dump` read them by assignment
//!   from explicit offsets, so their group (`<group>-state-restore`) needs no ACL (checked:
//!   taken away, nothing fails).
//! - with `--dlq-replay GROUP`, `sluice dlq replay -f` as the same principal: Read on the
//!   dead-letter topic and on the replay's group, Write on the input topics it re-injects into.
//!
//! A resource whose name comes from a `${VAR}` gets a prefixed binding on the text before the
//! first variable.

use std::fmt;

use crate::{OutputSpec, PipelineSpec, SourceSpec, StateSpec};

/// A Kafka resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
}

/// How a binding's name matches resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PatternType {
    /// Exactly this name.
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// An operation on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Fetch, commit, join (groups).
    Read,
    /// Produce; a transactional id's use.
    Write,
    /// Create a topic.
    Create,
}

/// One allow binding for the principal, on any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclBinding {
    /// The resource type.
    pub resource: ResourceType,
    /// The resource name (a prefix with [`PatternType::Prefixed`]).
    pub name: String,
    /// How the name matches.
    pub pattern: PatternType,
    /// What is allowed.
    pub operation: Operation,
    /// Why the pipeline needs it.
    pub reason: String,
}

impl ResourceType {
    /// kafka-acls.sh's option.
    fn cli_option(self) -> &'static str {
        match self {
            ResourceType::Topic => "--topic",
            ResourceType::Group => "--group",
            ResourceType::TransactionalId => "--transactional-id",
        }
    }

    /// Strimzi's `resource.type`.
    fn strimzi(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::TransactionalId => "transactionalId",
        }
    }

    /// Kafka's name (`TOPIC`, `GROUP`, `TRANSACTIONAL_ID`).
    pub fn kafka(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
        }
    }
}

impl PatternType {
    /// Kafka's name (`LITERAL`, `PREFIXED`).
    pub fn kafka(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
        })
    }
}

/// A name from the spec: where a variable was, everything from it on is cut and the binding
/// is prefixed. `marker` is what [`derive`]'s caller substituted for each variable.
fn name_of(text: &str, marker: &str) -> Result<(String, PatternType), String> {
    match text.find(marker) {
        None => Ok((text.to_owned(), PatternType::Literal)),
        Some(0) => Err(format!(
            "`{}` starts with a variable: no ACL can name it; give it a fixed prefix",
            text.replace(marker, "${...}")
        )),
        Some(at) => Ok((text[..at].to_owned(), PatternType::Prefixed)),
    }
}

/// The bindings `spec` needs. `marker` is the text that stands for an unresolved `${VAR}` in
/// the spec's names (empty when none); `replay_group`: also what `sluice dlq replay -f` as this
/// group needs.
pub fn derive(
    spec: &PipelineSpec,
    marker: &str,
    replay_group: Option<&str>,
) -> Result<Vec<AclBinding>, String> {
    let mut acls = Vec::new();
    let mut add = |resource, text: &str, operation, reason: String| -> Result<(), String> {
        let (name, pattern) = if marker.is_empty() {
            (text.to_owned(), PatternType::Literal)
        } else {
            name_of(text, marker)?
        };
        acls.push(AclBinding {
            resource,
            name,
            pattern,
            operation,
            reason,
        });
        Ok(())
    };
    if let SourceSpec::Kafka(kafka) = &spec.source {
        for topic in &kafka.topics {
            add(
                ResourceType::Topic,
                topic,
                Operation::Read,
                "the input topic".into(),
            )?;
        }
        add(
            ResourceType::Group,
            &kafka.group_id,
            Operation::Read,
            "the consumer group: join, fetch and commit offsets".into(),
        )?;
        if let Some(state) = &spec.state {
            for topic in &kafka.topics {
                for store in &state.stores {
                    let changelog = StateSpec::changelog_topic(&kafka.group_id, topic, store);
                    for (operation, what) in [
                        (Operation::Create, "created at the first start"),
                        (Operation::Read, "read by restores"),
                        (Operation::Write, "written on every flush"),
                    ] {
                        add(
                            ResourceType::Topic,
                            &changelog,
                            operation,
                            format!("changelog of store `{store}`: {what}"),
                        )?;
                    }
                }
            }
        }
    }
    for (name, output) in &spec.outputs {
        if let OutputSpec::Kafka(k) = output {
            add(
                ResourceType::Topic,
                &k.topic,
                Operation::Write,
                format!("output `{name}`"),
            )?;
        }
    }
    if let Some(topic) = &spec.error_policy.dead_letter_topic {
        add(
            ResourceType::Topic,
            topic,
            Operation::Write,
            "the dead-letter topic".into(),
        )?;
    }
    if let (Some(group), Some(dlq), SourceSpec::Kafka(kafka)) = (
        replay_group,
        &spec.error_policy.dead_letter_topic,
        &spec.source,
    ) {
        add(
            ResourceType::Topic,
            dlq,
            Operation::Read,
            "dlq replay: reads the dead letters".into(),
        )?;
        add(
            ResourceType::Group,
            group,
            Operation::Read,
            "dlq replay: its position in the dead-letter topic".into(),
        )?;
        for topic in &kafka.topics {
            add(
                ResourceType::Topic,
                topic,
                Operation::Write,
                "dlq replay: re-injects dead letters into their source topic".into(),
            )?;
        }
    }
    if let Some(id) = &spec.producer.transactional_id {
        add(
            ResourceType::TransactionalId,
            id,
            Operation::Write,
            "exactly-once: the producer's transactions".into(),
        )?;
    }
    acls.sort();
    acls.dedup_by(|a, b| {
        (a.resource, &a.name, a.pattern, a.operation)
            == (b.resource, &b.name, b.pattern, b.operation)
    });
    Ok(acls)
}

/// `kafka-acls.sh` commands that add `acls` for `principal`.
pub fn kafka_acls_commands(acls: &[AclBinding], principal: &str, bootstrap: &str) -> String {
    let mut out = String::new();
    for acl in acls {
        let pattern = match acl.pattern {
            PatternType::Literal => "",
            PatternType::Prefixed => " --resource-pattern-type prefixed",
        };
        out.push_str(&format!(
            "# {}\nkafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties --add --allow-principal '{principal}' --operation {} {} '{}'{pattern}\n",
            acl.reason,
            acl.operation,
            acl.resource.cli_option(),
            acl.name,
        ));
    }
    out
}

/// Strimzi's `KafkaUser` `spec.authorization` block (simple authorization) for `acls`.
pub fn strimzi_authorization(acls: &[AclBinding]) -> String {
    let mut out = String::from("authorization:\n  type: simple\n  acls:\n");
    for acl in acls {
        let pattern = match acl.pattern {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefix",
        };
        out.push_str(&format!(
            "    # {}\n    - resource:\n        type: {}\n        name: {}\n        patternType: {pattern}\n      operations: [{}]\n      host: \"*\"\n",
            acl.reason,
            acl.resource.strimzi(),
            serde_json::to_string(&acl.name).unwrap_or_default(),
            acl.operation,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(text: &str) -> PipelineSpec {
        PipelineSpec::parse(text, Path::new("p.yaml"), |_| None).unwrap()
    }

    const BASE: &str = "name: p\nplugin: {path: lib.so}\nsource:\n  kafka: {bootstrap-servers: 'k:9092', topics: [rides], group-id: g}\n";

    fn lines(acls: &[AclBinding]) -> Vec<String> {
        acls.iter()
            .map(|a| {
                format!(
                    "{} {} {} {}",
                    a.operation,
                    a.resource.kafka(),
                    a.name,
                    a.pattern.kafka()
                )
            })
            .collect()
    }

    #[test]
    fn an_at_least_once_pipeline_reads_its_topics_and_group_and_writes_its_outputs() {
        let spec = spec(&format!(
            "{BASE}outputs:\n  out: {{kafka: {{topic: enriched}}}}\nerror-policy: {{dead-letter-topic: rides-dlq}}\n"
        ));
        assert_eq!(
            lines(&derive(&spec, "", None).unwrap()),
            [
                "Write TOPIC enriched LITERAL",
                "Read TOPIC rides LITERAL",
                "Write TOPIC rides-dlq LITERAL",
                "Read GROUP g LITERAL",
            ]
        );
    }

    #[test]
    fn exactly_once_and_state_add_the_transactional_id_changelogs_and_restore_group() {
        let spec = spec(&format!(
            "{BASE}outputs:\n  out: {{kafka: {{topic: counts}}}}\nproducer: {{transactional-id: 'p-MARK'}}\nstate: {{stores: [windows], dir: /tmp/s}}\n"
        ));
        let acls = derive(&spec, "MARK", None).unwrap();
        let got = lines(&acls);
        for want in [
            "Write TRANSACTIONAL_ID p- PREFIXED",
            "Create TOPIC g-rides-windows-changelog LITERAL",
            "Read TOPIC g-rides-windows-changelog LITERAL",
            "Write TOPIC g-rides-windows-changelog LITERAL",
            "Write TOPIC counts LITERAL",
        ] {
            assert!(got.iter().any(|l| l == want), "{want} missing from {got:?}");
        }
        let text = strimzi_authorization(&acls);
        assert!(
            text.contains(
                "type: transactionalId\n        name: \"p-\"\n        patternType: prefix"
            ),
            "{text}"
        );
        let commands = kafka_acls_commands(&acls, "User:p", "k:9093");
        assert!(
            commands.contains(
                "--operation Write --transactional-id 'p-' --resource-pattern-type prefixed"
            ),
            "{commands}"
        );
    }

    #[test]
    fn a_name_that_starts_with_a_variable_cannot_be_bound() {
        let spec = spec(&format!(
            "{BASE}outputs:\n  out: {{kafka: {{topic: o}}}}\nproducer: {{transactional-id: 'MARK'}}\n"
        ));
        let err = derive(&spec, "MARK", None).unwrap_err();
        assert!(err.contains("starts with a variable"), "{err}");
    }
}
