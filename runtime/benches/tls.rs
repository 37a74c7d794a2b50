//! What TLS and SASL cost: the passthrough over SASL_SSL (SCRAM-SHA-512, TLS with a CA from a
//! file, host name verified) against PLAINTEXT, for Sluice and for Kafka Streams, on one secured
//! Apache Kafka node (`scripts/kafka-broker.sh` with `KAFKA_TLS_DIR`), in one run:
//! - at full speed: input events/s and CPU-s per million events over the steady state (from a
//!   third of the output on, as `peers` measures);
//! - at a fixed 5,000 events/s for 10 s: p50 and p99 from the harness's send to its read of the
//!   output record, and CPU per event (`common::FixedRate`).
//!
//! The harness produces and reads on the broker's PLAINTEXT listener; only the peer under test
//! connects through the secured one, as the principal `User:bench` with ACLs on the `tls-`
//! topics and groups. Rounds alternate between the four configurations.
//!
//! Run: `make bench` (or build the Kafka Streams peer as `peers` says, then
//! `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench tls`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{FixedRate, measure_from_a_third, median, output_count, percentile, run_spec};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use sluice_tests::{Broker, kafka_tool, plugin, root, write_spec};

const EVENTS: usize = 600_000;
const PARTITIONS: i32 = 12;
const STREAMS: &str = "Kafka Streams 4.1.1";

fn rounds() -> usize {
    std::env::var("TLS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// How a peer connects.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Plaintext,
    SaslSsl,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::Plaintext => "PLAINTEXT",
            Wire::SaslSsl => "SASL_SSL",
        }
    }
}

struct Bench<'a> {
    broker: &'a Broker,
    dir: &'a Path,
    streams: &'a Path,
}

impl Bench<'_> {
    fn bootstrap(&self, wire: Wire) -> String {
        match wire {
            Wire::Plaintext => self.broker.addr.clone(),
            Wire::SaslSsl => self.broker.secured.as_ref().unwrap().sasl_ssl.clone(),
        }
    }

    /// Starts `peer` on `input` -> `output` (also its group / application id) over `wire`.
    fn start(&self, peer: &str, wire: Wire, input: &str, output: &str) -> Child {
        let bootstrap = self.bootstrap(wire);
        let ca = self.broker.secured.as_ref().unwrap().tls.join("ca.crt");
        if peer == STREAMS {
            let classpath = format!(
                "{0}/target/classes:{0}/target/libs/*",
                self.streams.display()
            );
            let mut command = Command::new("java");
            command
                .args([
                    "-cp",
                    &classpath,
                    "dev.sluice.bench.StreamsPeer",
                    "passthrough",
                ])
                .args([&bootstrap, input, output, output, "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if wire == Wire::SaslSsl {
                let props = self.dir.join("streams-sasl-ssl.properties");
                std::fs::write(
                    &props,
                    format!(
                        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"bench\" password=\"bench-pw\";\nssl.truststore.type=PEM\nssl.truststore.location={}\n",
                        ca.display()
                    ),
                )
                .unwrap();
                command.env("STREAMS_PEER_PROPERTIES", props);
            }
            return command.spawn().expect("java (make bench installs it)");
        }
        let security = match wire {
            Wire::Plaintext => String::new(),
            Wire::SaslSsl => format!(
                "    security:\n      protocol: sasl-ssl\n      sasl: {{mechanism: SCRAM-SHA-512, username: bench, password-file: password}}\n      tls: {{ca-file: {}}}\n",
                ca.display()
            ),
        };
        let spec = write_spec(
            self.dir,
            &format!(
                "name: bench\nadmin:\n  listen: 127.0.0.1:0\nplugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [{input}]\n    group-id: {output}\n{security}outputs:\n  out:\n    kafka: {{topic: {output}}}\n",
                plugin("passthrough").display()
            ),
        );
        run_spec(
            &plugin("passthrough").parent().unwrap().join("sluice"),
            &spec,
        )
    }
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

fn main() {
    let streams = root().join("runtime/benches/streams");
    assert!(
        streams
            .join("target/classes/dev/sluice/bench/StreamsPeer.class")
            .exists(),
        "the Kafka Streams peer is not built: run `make bench`"
    );
    let broker = Broker::start_secured(&[("bench", "bench-pw")], None);
    for (kind, op) in [("TOPIC", "ALL"), ("GROUP", "ALL")] {
        kafka_tool(&[
            "acl",
            "--broker",
            &broker.addr,
            "--topic",
            "add",
            "--principal",
            "User:bench",
            "--resource-type",
            kind,
            "--name",
            "tls-",
            "--pattern",
            "PREFIXED",
            "--operation",
            op,
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), "bench-pw\n").unwrap();
    let bench = Bench {
        broker: &broker,
        dir: dir.path(),
        streams: &streams,
    };
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    broker.create_topic("tls-in", PARTITIONS as u32);
    broker.produce("tls-in", EVENTS, 0, &["--keys", "1000", "--size", "150"]);
    let configs = [
        ("Sluice", Wire::Plaintext),
        ("Sluice", Wire::SaslSsl),
        (STREAMS, Wire::Plaintext),
        (STREAMS, Wire::SaslSsl),
    ];
    // Per configuration: (events/s, CPU-s per M) at full speed; (p50, p99, CPU-s per M) at 5,000/s.
    let mut full: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len()];
    let mut fixed: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); configs.len()];
    let producer = common::timed_producer(&broker.addr);
    let rate = FixedRate {
        rate: 5_000,
        seconds: 10,
        partitions: PARTITIONS,
        fetch_wait_ms: None,
        pad: 150,
    };
    for round in 0..rounds() {
        for (i, (peer, wire)) in configs.iter().enumerate() {
            let out = format!("tls-full-{i}-{round}");
            broker.create_topic(&out, PARTITIONS as u32);
            let child = bench.start(peer, *wire, "tls-in", &out);
            let (events, cpu) = measure_from_a_third(child.id(), EVENTS, &out, || {
                output_count(&watcher, &out, PARTITIONS)
            });
            stop(child);
            println!(
                "full speed, round {round}: {peer} over {}: {events:.0} ev/s, {cpu:.2} CPU-s per M events",
                wire.name()
            );
            full[i].push((events, cpu));

            let (input, out) = (
                format!("tls-lat-in-{i}-{round}"),
                format!("tls-lat-{i}-{round}"),
            );
            broker.create_topic(&input, PARTITIONS as u32);
            broker.create_topic(&out, PARTITIONS as u32);
            let child = bench.start(peer, *wire, &input, &out);
            let (latencies, cpu) = rate.measure(&broker.addr, &producer, &input, &out, child.id());
            stop(child);
            let per_m = cpu / (latencies.len() as f64 / 1e6);
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            println!(
                "5,000 ev/s, round {round}: {peer} over {}: p50 {p50:.1} ms, p99 {p99:.1} ms, {per_m:.2} CPU-s per M events",
                wire.name()
            );
            fixed[i].push((p50, p99, per_m));
        }
    }
    let med2 =
        |i: usize, f: fn(&(f64, f64)) -> f64| median(&full[i].iter().map(f).collect::<Vec<_>>());
    let med3 = |i: usize, f: fn(&(f64, f64, f64)) -> f64| {
        median(&fixed[i].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "\nKafka -> passthrough -> Kafka, {EVENTS} events of ~200 bytes, {PARTITIONS} partitions, median of {}",
        rounds()
    );
    println!(
        "{:>32} {:>12} {:>16} {:>10} {:>10} {:>16}",
        "", "events/s", "CPU-s/M (full)", "p50 ms", "p99 ms", "CPU-s/M (5k/s)"
    );
    for (i, (peer, wire)) in configs.iter().enumerate() {
        println!(
            "{:>32} {:>12.0} {:>16.2} {:>10.1} {:>10.1} {:>16.2}",
            format!("{peer} over {}", wire.name()),
            med2(i, |r| r.0),
            med2(i, |r| r.1),
            med3(i, |r| r.0),
            med3(i, |r| r.1),
            med3(i, |r| r.2),
        );
    }
    for (name, plain, tls) in [("Sluice", 0, 1), (STREAMS, 2, 3)] {
        println!(
            "{name}: SASL_SSL costs {:+.0}% CPU per event at full speed, {:+.0}% at 5,000 ev/s; p99 {:.2}x",
            (med2(tls, |r| r.1) / med2(plain, |r| r.1) - 1.0) * 100.0,
            (med3(tls, |r| r.2) / med3(plain, |r| r.2) - 1.0) * 100.0,
            med3(tls, |r| r.1) / med3(plain, |r| r.1),
        );
    }
    println!(
        "over SASL_SSL, Sluice has {:.2}x Kafka Streams' events per CPU-second at full speed ({:.2}x at 5,000 ev/s)",
        med2(3, |r| r.1) / med2(1, |r| r.1),
        med3(3, |r| r.2) / med3(1, |r| r.2),
    );
}
