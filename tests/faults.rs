//! Injected broker faults from librdkafka's mock cluster: faults the real test broker cannot give
//! on demand.
//!
//! The mock does not check the sequence numbers of an idempotent (non-transactional) producer
//! (`rd_kafka_mock_validate_records` returns early without a transactional id). With several
//! requests in flight, an injected error on the first while the second succeeds makes the mock
//! write batch 2 without batch 1; a real broker would refuse batch 2 as out of order. librdkafka
//! then takes batch 1 as "implicitly acked by subsequent batch success" (its IMPLICITACK debug
//! line), correctly for a real broker, and those records are missing from the mock's log. This
//! test therefore keeps one produce request in flight, so an injected error is always retried
//! before anything after it is sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::plugin;

/// Faults a real broker cannot give on demand, from librdkafka's mock cluster: produce requests
/// failing with retriable errors, and the broker going down mid-stream. The pipeline runs
/// in-process against the mock; nothing may be lost.
#[test]
fn injected_broker_faults_lose_nothing() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{ClientConfig, Message};

    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("in", 2, 1).unwrap();
    mock.create_topic("out", 2, 1).unwrap();
    let total = 2000;
    produce_input(&bootstrap, "in", total);

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name: faults\nplugin:\n  path: {}\n  config: {{mode: slow, delay_us: 2000}}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [in]\n    group-id: faults\n    commit-interval-ms: 200\n    batch-size: 32\n    properties: {{group.initial.rebalance.delay.ms: \"0\"}}\nproducer:\n  properties: {{message.timeout.ms: \"60000\", retry.backoff.ms: \"50\", max.in.flight.requests.per.connection: \"1\"}}\noutputs:\n  out:\n    kafka: {{topic: out}}\n",
        plugin("misbehaving").display()
    );
    let text = text.replace(
        "    properties: {group.initial.rebalance.delay.ms: \"0\"}\n",
        "",
    );
    let spec =
        sluice_runtime::config::PipelineSpec::parse(&text, &dir.path().join("faults.yaml"), |_| {
            None
        })
        .unwrap();
    // The first produce requests fail with retriable errors...
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20],
    );
    let shutdown = sluice_runtime::shutdown::Shutdown::manual();
    let started = Instant::now();
    let runner = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || sluice_runtime::source::kafka::run(&spec, &shutdown))
    };

    // ...then, once the group is assigned (~3 s on the mock) and work is under way, the broker
    // goes down mid-stream and comes back.
    std::thread::sleep(Duration::from_secs(4));
    mock.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    mock.broker_up(1).unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "checker")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["out"]).unwrap();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < total && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                *seen.entry(v["seq"].as_i64().unwrap()).or_default() += 1;
            }
            Some(Err(e)) => eprintln!("checker: {e}"),
            None => {}
        }
    }
    eprintln!("checker done at {:?}", started.elapsed());
    shutdown.request();
    let summary = runner
        .join()
        .unwrap()
        .expect("the pipeline survives the faults");
    let marks: Vec<_> = (0..2)
        .map(|p| consumer.fetch_watermarks("out", p, Duration::from_secs(5)))
        .collect();
    eprintln!("stopped at {:?}", started.elapsed());
    eprintln!(
        "mock run: {summary}, checker saw {}, watermarks {marks:?}",
        seen.len()
    );
    let lost: Vec<i64> = (0..total as i64)
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // The pipeline is gone: read what it committed with its own group id.
    assert_eq!(
        committed(&bootstrap, "faults", "in", 2),
        total as i64,
        "a graceful stop after the faults commits every event"
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "mock faults: {} events in, {duplicates} duplicates in the output",
        summary.events_in
    );
}

/// Writes `total` events to `topic`: key `k{i % 16}`, value `{"key": ..., "seq": i}`.
fn produce_input(bootstrap: &str, topic: &str, total: usize) {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..total {
        let key = format!("k{}", i % 16);
        let value = serde_json::json!({"seq": i, "key": key}).to_string();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&value))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Sum of the offsets `group` committed for `topic`'s partitions `0..partitions`.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    // No subscription: reading offsets does not join (and disturb) the group.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1).max(0))
        .sum()
}

/// Records that cannot be delivered within `message.timeout.ms` (the broker leading the output
/// partition goes down; librdkafka keeps retrying until then) stop the pipeline with the error,
/// and the committed offset never moves past their events.
#[test]
fn a_delivery_that_finally_fails_stops_the_pipeline_without_committing_past_it() {
    use rdkafka::ClientConfig;
    use rdkafka::mocking::{MockCluster, MockCoordinator};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    // Two brokers: the input and the group on broker 1, the output on broker 2.
    let mock = MockCluster::new(2).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("in", 1, 1).unwrap();
    mock.create_topic("out", 1, 1).unwrap();
    mock.partition_leader("in", 0, Some(1)).unwrap();
    mock.partition_leader("out", 0, Some(2)).unwrap();
    mock.coordinator(MockCoordinator::Group("undeliverable".into()), 1)
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let produce = |from: usize, to: usize| {
        for i in from..to {
            let value = format!("{{\"seq\": {i}}}");
            producer
                .send(BaseRecord::<str, String>::to("in").payload(&value))
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    produce(0, 100);

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name: undeliverable\nplugin:\n  path: {}\n  config: {{mode: ok}}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [in]\n    group-id: undeliverable\n    commit-interval-ms: 100\nproducer:\n  properties: {{message.timeout.ms: \"3000\", retry.backoff.ms: \"50\"}}\noutputs:\n  out:\n    kafka: {{topic: out}}\n",
        plugin("misbehaving").display()
    );
    let spec = sluice_runtime::config::PipelineSpec::parse(
        &text,
        &dir.path().join("undeliverable.yaml"),
        |_| None,
    )
    .unwrap();
    let shutdown = sluice_runtime::shutdown::Shutdown::manual();
    let runner = std::thread::spawn(move || sluice_runtime::source::kafka::run(&spec, &shutdown));
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&bootstrap, "undeliverable", "in", 1) < 100 {
        assert!(
            Instant::now() < deadline,
            "the first 100 events were never committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The output's broker goes down (a leader-less partition crashes the mock); then 50 more
    // events arrive.
    mock.broker_down(2).unwrap();
    produce(100, 150);
    let result = runner.join().unwrap();
    let err = result.expect_err("an undeliverable record stops the pipeline");
    assert!(
        err.to_string()
            .contains("delivery to topic out failed: Message production error: MessageTimedOut"),
        "{err}"
    );
    assert_eq!(
        committed(&bootstrap, "undeliverable", "in", 1),
        100,
        "nothing committed past the undelivered events"
    );
}

/// Kafka -> Kafka with transactions, on librdkafka's mock cluster: the real `sluice` binary runs
/// with a transactional id through init, begin, send-offsets and commit every 200 ms, and on
/// SIGTERM commits the last transaction: every event arrives exactly once. The kill -9 proof is
/// on Apache Kafka (`guarantees.rs`): the mock does not store offsets sent in a transaction
/// (`TxnOffsetCommit` answers without saving them) and shows aborted records to
/// `read_committed` consumers (next test).
#[test]
fn transactions_commit_every_interval_and_deliver_each_event_once() {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("in", 2, 1).unwrap();
    mock.create_topic("out", 2, 1).unwrap();
    let total = 2000;
    produce_input(&bootstrap, "in", total);

    let dir = tempfile::tempdir().unwrap();
    let spec = sluice_tests::write_spec(
        dir.path(),
        &format!(
            "name: txn\nplugin:\n  path: {}\n  config: {{mode: slow, delay_us: 1000}}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [in]\n    group-id: txn\n    commit-interval-ms: 200\n    batch-size: 16\nproducer:\n  transactional-id: txn-test\noutputs:\n  out:\n    kafka: {{topic: out}}\n",
            plugin("misbehaving").display()
        ),
    );
    let run = sluice_tests::start(&spec, dir.path());
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "reader")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, rdkafka::Offset::Beginning)
        .unwrap();
    tpl.add_partition_offset("out", 1, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline
        && (seqs.len() < total || quiet_since.elapsed() < Duration::from_secs(2))
    {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            seqs.push(v["seq"].as_i64().unwrap());
            quiet_since = Instant::now();
        }
    }
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..total as i64).collect::<Vec<_>>(),
        "each event once:\n{log}"
    );
    assert!(
        log.contains("revoked: draining into the transaction"),
        "{log}"
    );
}

/// Why the transaction test above cannot check exactly-once visibility: librdkafka's mock
/// cluster shows a `read_committed` consumer the records of aborted transactions. If this test
/// starts failing, the mock has learned to hide them and the test above can assert exactly
/// once.
#[test]
fn the_mock_cluster_shows_aborted_transactions_to_read_committed_consumers() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("out", 1, 1).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "x")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(10)).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..10 {
        p.send(BaseRecord::<str, str>::to("out").payload(&format!("aborted{i}")))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    p.abort_transaction(Duration::from_secs(10)).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..5 {
        p.send(BaseRecord::<str, str>::to("out").payload(&format!("committed{i}")))
            .unwrap();
    }
    p.commit_transaction(Duration::from_secs(10)).unwrap();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "r")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            seen.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
        }
    }
    assert_eq!(seen.len(), 15, "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("aborted")), "{seen:?}");
}
