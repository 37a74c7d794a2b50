//! `sluice acls`: the ACL bindings a pipeline needs (`sluice_spec::acls`), printed for
//! kafka-acls.sh and Strimzi, or created through the Admin API.

use std::path::PathBuf;
use std::time::Duration;

use sluice_runtime::config::acls;
use sluice_runtime::config::{PipelineSpec, SourceSpec};

/// What an unset `${VAR}` becomes while the names are derived: a name holding it is bound by
/// the prefix before it.
const MARKER: &str = "__sluice_var__";

/// `sluice acls` arguments.
#[derive(Debug, clap::Args)]
pub struct AclsArgs {
    /// The pipeline spec (YAML). A `${VAR}` that is set in the environment is used as it is;
    /// a name built from an unset one (`orders-${POD_NAME}`) gets a prefixed binding.
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// The pipeline's principal, `User:NAME` (mTLS: `User:CN=NAME`); default: the SASL user of
    /// `source.kafka.security`.
    #[arg(long)]
    principal: Option<String>,
    /// What to print.
    #[arg(long, value_enum, default_value = "both")]
    format: Format,
    /// Also what `sluice dlq replay -f SPEC --group GROUP` needs as the same principal (read
    /// the dead letters, re-inject them into the input topics).
    #[arg(long, value_name = "GROUP", num_args = 0..=1, default_missing_value = "sluice-dlq-replay")]
    dlq_replay: Option<String>,
    /// Create the bindings through the Admin API (CreateAcls) instead of printing them,
    /// connecting as the admin given by --bootstrap-servers, --command-config and --property.
    #[arg(long)]
    apply: bool,
    /// Brokers for --apply and the printed commands; default: the spec's.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// A file of librdkafka `key=value` lines (# comments) for the admin's connection with
    /// --apply: its security.protocol, sasl.* and ssl.* settings.
    #[arg(long, value_name = "FILE")]
    command_config: Option<PathBuf>,
    /// A librdkafka property of the admin's connection with --apply, `key=value` (repeatable).
    #[arg(long = "property", value_parser = crate::cli::parse_property)]
    properties: Vec<(String, String)>,
}

/// `sluice acls --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// kafka-acls.sh commands, then the Strimzi block.
    Both,
    /// kafka-acls.sh commands.
    KafkaAcls,
    /// A Strimzi KafkaUser `spec.authorization` block.
    Strimzi,
    /// One JSON object per binding.
    Json,
}

/// Runs `sluice acls`.
pub fn run(args: &AclsArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    // Checked as a run would read it (every variable resolved), then read again with unset
    // variables marked, for the names.
    let text = std::fs::read_to_string(&args.spec).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read the pipeline spec: {e}",
            args.spec.display()
        )
    })?;
    let marked = PipelineSpec::parse(&text, &args.spec, |name| {
        std::env::var(name).ok().or_else(|| Some(MARKER.to_owned()))
    });
    let (spec, marker, resolved) = match (marked, PipelineSpec::load(&args.spec)) {
        (Ok(marked), Ok(resolved)) => (marked, MARKER, resolved),
        // A variable a pod sets (`${POD_NAME}`) and this shell does not.
        (Ok(marked), Err(_)) => (marked.clone(), MARKER, marked),
        // A marker where a number belongs: the names as the environment gives them.
        (Err(_), resolved) => {
            let resolved = resolved?;
            (resolved.clone(), "", resolved)
        }
    };
    let bindings = acls::derive(&spec, marker, args.dlq_replay.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.spec.display()))?;
    let principal = match (&args.principal, &resolved.source) {
        (Some(p), _) => p.clone(),
        (None, SourceSpec::Kafka(kafka)) => kafka.security.principal().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: source.kafka.security names no SASL user (mTLS or OAUTHBEARER): pass --principal User:NAME (mTLS: User:CN=NAME)",
                args.spec.display()
            )
        })?,
        (None, SourceSpec::File(_)) => anyhow::bail!("--principal: name the pipeline's principal, User:NAME"),
    };
    if !principal.starts_with("User:") || principal.len() == 5 {
        anyhow::bail!("--principal {principal}: write User:NAME (mTLS: User:CN=NAME)");
    }
    let bootstrap = args
        .bootstrap_servers
        .clone()
        .or_else(|| match &resolved.source {
            SourceSpec::Kafka(kafka) => Some(kafka.bootstrap_servers.clone()),
            SourceSpec::File(_) => resolved.producer.bootstrap_servers.clone(),
        });
    if args.apply {
        let bootstrap = bootstrap.ok_or_else(|| {
            anyhow::anyhow!("--apply: the spec names no brokers: pass --bootstrap-servers")
        })?;
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        if let Some(file) = &args.command_config {
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("--command-config {}: cannot read it: {e}", file.display())
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}:{}: write key=value (a librdkafka property)",
                        file.display(),
                        n + 1
                    )
                })?;
                config.set(k.trim(), v.trim());
            }
        }
        for (k, v) in &args.properties {
            config.set(k, v);
        }
        sluice_runtime::kafka_acls::create_acls(
            &config,
            &principal,
            &bindings,
            Duration::from_secs(30),
        )
        .map_err(|e| anyhow::anyhow!("acls --apply: {e}"))?;
        eprintln!(
            "sluice: {} ACL bindings for {principal} (pipeline {}) are in place on {bootstrap}",
            bindings.len(),
            resolved.name
        );
        return Ok(());
    }
    let bootstrap = bootstrap.unwrap_or_else(|| "BROKER:PORT".into());
    let mut out = std::io::stdout().lock();
    let header = format!(
        "# ACLs of pipeline {} ({}) for {principal}: least privilege with allow.everyone.if.no.acl.found=false.\n# Idempotent producers need no IdempotentWrite on the cluster since Kafka 3.0.\n",
        resolved.name,
        args.spec.display()
    );
    match args.format {
        Format::Both | Format::KafkaAcls => {
            write!(out, "{header}")?;
            write!(
                out,
                "{}",
                acls::kafka_acls_commands(&bindings, &principal, &bootstrap)
            )?;
            if matches!(args.format, Format::Both) {
                writeln!(out, "\n# As a Strimzi KafkaUser's spec:")?;
                write!(out, "{}", acls::strimzi_authorization(&bindings))?;
            }
        }
        Format::Strimzi => {
            write!(out, "{header}")?;
            write!(out, "{}", acls::strimzi_authorization(&bindings))?;
        }
        Format::Json => {
            for b in &bindings {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "principal": principal,
                        "resource_type": b.resource.kafka(),
                        "name": b.name,
                        "pattern_type": b.pattern.kafka(),
                        "operation": b.operation.to_string().to_uppercase(),
                        "reason": b.reason,
                    })
                )?;
            }
        }
    }
    Ok(())
}
