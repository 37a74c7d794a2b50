//! Schema-registry formats on the real broker and a real registry (Apicurio Registry): values
//! written by another implementation of the Confluent wire format (confluent-kafka's
//! serializers) are decoded into JSON for the plugin, and records are encoded for outputs that
//! confluent-kafka's deserializers read back; bad values are dead-lettered with the reason; a
//! registry outage holds events (not ready, nothing committed past them) until it answers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};
use sluice_tests::registry::{Registry, registry_tool};
use sluice_tests::{free_port, http_get, plugin, root, start, unique, wait_until, write_spec};

use super::broker;

/// The shared registry of these tests.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::start)
}

fn schema_file(name: &str) -> PathBuf {
    root().join("tests/fixtures/schemas").join(name)
}

/// registry_tool.py `command` on `topic` in `format` with the schema file `schema`, then `extra`.
fn serdes(
    registry: &Registry,
    command: &str,
    topic: &str,
    format: &str,
    schema: &str,
    extra: &[&str],
) -> String {
    let schema = schema_file(schema);
    let mut args = vec![
        command,
        "--broker",
        &broker().addr,
        "--registry",
        &registry.url,
        "--topic",
        topic,
        "--format",
        format,
        "--schema",
        schema.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    registry_tool(&args)
}

/// confluent-kafka's serializer writes each JSON line of `records` to `topic`.
fn produce_with(registry: &Registry, topic: &str, format: &str, schema: &str, records: &Path) {
    serdes(
        registry,
        "produce",
        topic,
        format,
        schema,
        &["--records", records.to_str().unwrap()],
    );
}

/// confluent-kafka's deserializer reads `expect` records of `topic`: (schema id, value).
fn consume_with(
    registry: &Registry,
    topic: &str,
    format: &str,
    schema: &str,
    expect: usize,
) -> Vec<(u64, Value)> {
    serdes(
        registry,
        "consume",
        topic,
        format,
        schema,
        &["--expect", &expect.to_string()],
    )
    .lines()
    .map(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        (v["schema_id"].as_u64().unwrap(), v["value"].clone())
    })
    .collect()
}

/// A record read as bytes.
struct Raw {
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Raw {
    fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic` (one partition) up to `expect`, as bytes.
fn read_raw(topic: &str, expect: usize) -> Vec<Raw> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker().addr)
        .set("group.id", unique("raw-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(Raw {
                value: m.payload().map(<[u8]>::to_vec),
                headers: m.headers().map_or_else(Vec::new, |hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                }),
            });
        }
    }
    assert_eq!(out.len(), expect, "records of {topic}");
    out
}

/// Writes `values` to `topic` as they are (keys "raw-N").
fn produce_raw(topic: &str, values: &[Vec<u8>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker().addr)
        .create()
        .unwrap();
    for (i, value) in values.iter().enumerate() {
        let key = format!("raw-{i}");
        producer
            .send(BaseRecord::to(topic).key(&key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn spec(
    dir: &Path,
    input: &str,
    group: &str,
    registry: &Registry,
    format: &str,
    outputs: &str,
    extra: &str,
) -> PathBuf {
    write_spec(
        dir,
        &format!(
            "name: schemas\nplugin:\n  path: {}\n  config: {{mode: ok}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {group}\n    commit-interval-ms: 200\n    format: {format}\nschema-registry:\n  url: {}\n  timeout-ms: 1000\noutputs:\n{outputs}{extra}",
            plugin("misbehaving").display(),
            broker().addr,
            registry.url,
        ),
    )
}

fn records(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_format_is_decoded_for_the_plugin_and_encoded_back_through_the_registry() {
    sluice_tests::build();
    let dir = tempfile::tempdir().unwrap();
    let v1 = [
        json!({"id": 1, "city": "Jakarta", "fare": 12.5}),
        json!({"id": 2, "city": "Manila", "fare": 8.0}),
    ];
    let v2 = [json!({"id": 3, "city": "Singapore", "fare": 21.25, "promo": "SPRING"})];
    let first = records(dir.path(), "v1.jsonl", &v1);
    let evolved = records(dir.path(), "v2.jsonl", &v2);
    for (format, schema, newer, strategy) in [
        (
            "avro",
            "booking.avsc",
            Some("booking-v2.avsc"),
            "topic-name",
        ),
        ("protobuf", "booking.proto", None, "record-name"),
        (
            "json-schema",
            "booking.schema.json",
            None,
            "topic-record-name",
        ),
    ] {
        let (input, output, group) = (unique("in"), unique("out"), unique("group"));
        broker().create_topic(&input, 1);
        broker().create_topic(&output, 1);
        produce_with(registry(), &input, format, schema, &first);
        // A compatible newer writer schema in the same subject (an optional field added).
        let out_schema = match newer {
            Some(newer) => {
                produce_with(registry(), &input, format, newer, &evolved);
                newer
            }
            None => schema,
        };
        let expected = v1.len() + usize::from(newer.is_some());
        let outputs = format!(
            "  out:\n    kafka: {{topic: {output}, format: {format}, schema: {}, subject-name-strategy: {strategy}}}\n",
            schema_file(out_schema).display()
        );
        let spec = spec(dir.path(), &input, &group, registry(), format, &outputs, "");
        let run = start(&spec, dir.path());
        let read = consume_with(registry(), &output, format, out_schema, expected);
        let (code, log) = run.stop();
        assert_eq!(code, Some(0), "{format}: {log}");
        let values: Vec<Value> = read.iter().map(|(_, v)| v.clone()).collect();
        let mut want: Vec<Value> = v1.to_vec();
        match format {
            // Avro: the v1 records take the v2 schema's default; protobuf's JSON mapping writes
            // an int64 as a string (confluent-kafka's MessageToDict).
            "avro" => {
                for w in &mut want {
                    w["promo"] = Value::Null;
                }
                want.extend(v2.iter().cloned());
            }
            "protobuf" => {
                for w in &mut want {
                    w["id"] = json!(w["id"].to_string());
                }
            }
            _ => {}
        }
        assert_eq!(values, want, "{format}: what confluent-kafka read back");
        // The plugin saw the schema id and the raw value beside the JSON; outputs drop both
        // `sluice.*` headers.
        let raw = read_raw(&output, expected);
        let in_ids: Vec<String> = raw.iter().filter_map(|r| r.header("schema-id")).collect();
        assert_eq!(
            in_ids.len(),
            expected,
            "{format}: every event had its schema id"
        );
        assert!(raw.iter().all(|r| {
            r.header("raw-len")
                .is_some_and(|n| n.parse::<usize>().unwrap() > 5)
        }));
        assert!(
            raw.iter().all(|r| r.header("sluice.raw-value").is_none()
                && r.header("sluice.schema-id").is_none())
        );
        if newer.is_some() {
            assert_ne!(
                in_ids[0], in_ids[2],
                "{format}: two writer schemas, two ids"
            );
        }
        // The output's schema went under the subject its strategy names.
        let subject = match strategy {
            "topic-name" => format!("{output}-value"),
            "record-name" => "rides.v1.Booking".to_owned(),
            _ => format!("{output}-Booking"),
        };
        let port = registry().port();
        let subjects = http_get(port, "/apis/ccompat/v7/subjects").unwrap().1;
        assert!(
            subjects.contains(&format!("\"{subject}\"")),
            "{format}: {subject} in {subjects}"
        );
    }
}

#[test]
fn undecodable_values_and_records_that_do_not_fit_are_dead_lettered_with_the_reason() {
    sluice_tests::build();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    for topic in [&input, &output, &dlq] {
        broker().create_topic(topic, 1);
    }
    // One good value, then: a value without the wire format, an id the registry does not
    // know, a datum its schema does not decode; then a good value that the output's schema
    // refuses (the plugin forwards values as they are, and this one has no `fare`).
    let good = records(
        dir.path(),
        "good.jsonl",
        &[json!({"id": 1, "city": "Jakarta", "fare": 12.5})],
    );
    produce_with(registry(), &input, "avro", "booking.avsc", &good);
    let id = read_raw(&input, 1)[0].value.as_ref().unwrap()[1..5].to_vec();
    let mut corrupt = vec![0];
    corrupt.extend_from_slice(&id);
    corrupt.extend_from_slice(&[0xff, 0xff, 0xff]);
    produce_raw(
        &input,
        &[
            br#"{"id": 2}"#.to_vec(),
            vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 2],
            corrupt,
        ],
    );
    let outputs = format!(
        "  out:\n    kafka: {{topic: {output}, format: json-schema, subject: {output}-strict, schema: {}}}\n",
        schema_file("strict.schema.json").display()
    );
    let policy = format!(
        "error-policy:\n  invalid-input: dead-letter\n  sink-rejection: dead-letter\n  dead-letter-topic: {dlq}\n"
    );
    let spec = spec(
        dir.path(),
        &input,
        &group,
        registry(),
        "avro",
        &outputs,
        &policy,
    );
    let run = start(&spec, dir.path());
    let letters = read_raw(&dlq, 4);
    wait_until("every event committed", Duration::from_secs(30), || {
        broker().committed_sum(&input, &group) == 4
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.header("sluice.failure.class").unwrap(),
                l.header("sluice.failure.message").unwrap(),
            )
        })
        .collect();
    let has = |class: &str, text: &str| reasons.iter().any(|(c, m)| c == class && m.contains(text));
    assert!(
        has(
            "invalid-input",
            "not the Confluent wire format's magic byte 0"
        ),
        "{reasons:?}"
    );
    assert!(
        has(
            "invalid-input",
            "schema id 2147483632 is not in the schema registry"
        ),
        "{reasons:?}"
    );
    assert!(
        has("invalid-input", "not an Avro datum of its schema"),
        "{reasons:?}"
    );
    assert!(
        has("sink-rejection", "does not fit the JSON Schema"),
        "{reasons:?}"
    );
    // The undecodable values' dead letters hold them as they were read.
    assert!(
        letters
            .iter()
            .any(|l| l.value.as_deref() == Some(&br#"{"id": 2}"#[..]))
    );
    assert_eq!(read_raw(&output, 0).len(), 0);
}

#[test]
fn a_registry_outage_holds_events_until_it_answers_and_commits_nothing_past_them() {
    sluice_tests::build();
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (input, staged, output, group) = (
        unique("in"),
        unique("staged"),
        unique("out"),
        unique("group"),
    );
    for topic in [&input, &staged, &output] {
        broker().create_topic(topic, 1);
    }
    let v1 = records(
        dir.path(),
        "v1.jsonl",
        &[json!({"id": 1, "city": "Jakarta", "fare": 12.5})],
    );
    let v2 = records(
        dir.path(),
        "v2.jsonl",
        &[
            json!({"id": 2, "city": "Manila", "fare": 8.0, "promo": "A"}),
            json!({"id": 3, "city": "Cebu", "fare": 9.0, "promo": null}),
        ],
    );
    produce_with(&registry, &input, "avro", "booking.avsc", &v1);
    // Values of a schema the pipeline has not seen yet, registered while the registry is up.
    produce_with(&registry, &staged, "avro", "booking-v2.avsc", &v2);
    let port = free_port();
    let outputs = format!("  out:\n    kafka: {{topic: {output}}}\n");
    let admin = format!("admin:\n  listen: 127.0.0.1:{port}\n");
    let spec = spec(
        dir.path(),
        &input,
        &group,
        &registry,
        "avro",
        &outputs,
        &admin,
    );
    let run = start(&spec, dir.path());
    read_raw(&output, 1);
    wait_until("the first event committed", Duration::from_secs(30), || {
        broker().committed_sum(&input, &group) == 1
    });
    assert_eq!(http_get(port, "/readyz").map(|(c, _)| c), Some(200));

    registry.pause();
    let staged_values: Vec<Vec<u8>> = read_raw(&staged, 2)
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    produce_raw(&input, &staged_values);
    wait_until(
        "not ready while the registry does not answer",
        Duration::from_secs(30),
        || {
            http_get(port, "/readyz").is_some_and(|(code, body)| {
                code == 503 && body.contains("schema registry unreachable")
            })
        },
    );
    let scrape = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        sluice_tests::metric(
            &scrape,
            "sluice_sink_reachable",
            &[("output", "schema-registry")]
        ),
        Some(0.0),
        "{scrape}"
    );
    let status: Value = serde_json::from_str(&http_get(port, "/status").unwrap().1).unwrap();
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["state"] == "waiting-for-registry"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        broker().committed_sum(&input, &group),
        1,
        "nothing committed past the waiting events"
    );
    assert_eq!(read_raw(&output, 1).len(), 1);

    registry.resume();
    let records = read_raw(&output, 3);
    wait_until("every event committed", Duration::from_secs(30), || {
        broker().committed_sum(&input, &group) == 3
    });
    wait_until("ready again", Duration::from_secs(10), || {
        http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let cities: Vec<String> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(r.value.as_ref().unwrap()).unwrap()["city"].to_string()
        })
        .collect();
    assert_eq!(cities, ["\"Jakarta\"", "\"Manila\"", "\"Cebu\""]);
    assert!(log.contains("schema registry reachable again"), "{log}");
}

#[test]
fn an_https_registry_is_trusted_through_ca_file_and_refused_without_it() {
    sluice_tests::build();
    let registry = Registry::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    broker().create_topic(&input, 1);
    broker().create_topic(&output, 1);
    let bookings = schema_file("bookings.jsonl");
    sluice_tests::kafka_tool(&[
        "produce-file",
        "--broker",
        &broker().addr,
        "--topic",
        &input,
        "--file",
        bookings.to_str().unwrap(),
    ]);
    let outputs = format!(
        "  out:\n    kafka: {{topic: {output}, format: avro, schema: {}}}\n",
        schema_file("booking.avsc").display()
    );
    // A raw JSON source, an Avro output: the schema is registered over HTTPS at start.
    let trusted = spec(dir.path(), &input, &group, &registry, "raw", &outputs, "")
        .to_str()
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(&trusted).unwrap();
    std::fs::write(
        &trusted,
        // The output's schema is registered at start: give a registry that the machine's other
        // work slows down (the test binaries run side by side) time for that first request.
        text.replace(
            "  timeout-ms: 1000\n",
            &format!(
                "  timeout-ms: 15000\n  ca-file: {}\n",
                registry.ca_cert().display()
            ),
        ),
    )
    .unwrap();
    let run = start(Path::new(&trusted), dir.path());
    let read = sluice_tests::registry::try_registry_tool(&[
        "consume",
        "--broker",
        &broker().addr,
        "--registry",
        &registry.url,
        "--ca",
        registry.ca_cert().to_str().unwrap(),
        "--topic",
        &output,
        "--format",
        "avro",
        "--expect",
        "3",
    ]);
    let (code, log) = run.stop();
    let read: Vec<Value> = read
        .unwrap_or_else(|e| panic!("{e}\nthe pipeline's log:\n{log}"))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        read[2],
        json!({"id": 3, "city": "Singapore", "fare": 21.25})
    );

    // Without the CA the registry's certificate is not trusted: the run does not start, and
    // says which output and why in one line.
    let untrusted = dir.path().join("untrusted.yaml");
    std::fs::write(&untrusted, text.replace(&group, &unique("group"))).unwrap();
    let run = sluice_tests::sluice(&["run", "-f", untrusted.to_str().unwrap()], dir.path(), "");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let line = run.error_line();
    assert!(
        line.contains("output `out`")
            && line.contains(&registry.url)
            && line.contains("certificate"),
        "{line}"
    );
}
