//! Kafka -> no-op plugin -> Kafka through `sluice run`, against a raw rdkafka consume -> produce
//! loop written for this benchmark, on the same broker (tansu on 127.0.0.1) with the same input,
//! in one run. Rounds alternate (raw, sluice, sluice with metrics off, sluice with one worker,
//! ...), each with a fresh output topic and consumer group; a round's rate is measured from the
//! first record in its output topic to the last (so group-join time is left out of both), and
//! the report gives medians and ratios. Since the broker is the bottleneck, the metrics on/off
//! comparison also reports the CPU time sluice spent per event (`/proc/PID/stat`).
//!
//! The raw loop is what a careful hand-written at-least-once service does: poll, produce
//! (idempotent, acks=all), and every 10,000 events flush the producer and commit.
//!
//! Run: `make bench` (or `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench kafka`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice_tests::{Broker, kafka_tool, plugin, write_spec};

const EVENTS: usize = 200_000;
const PARTITIONS: i32 = 4;
const ROUNDS: usize = 5;

fn output_count(consumer: &BaseConsumer, topic: &str) -> i64 {
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Seconds from the first output record to the last.
fn watch(consumer: &BaseConsumer, topic: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    loop {
        let n = output_count(consumer, topic);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= EVENTS as i64 {
            return first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: only {n} of {EVENTS} records after 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw_loop(broker: &str, input: &str, output: &str, group: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let mut done = 0;
    let mut next: Vec<i64> = vec![-1; PARTITIONS as usize];
    while done < EVENTS {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(output);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        while let Err((e, r)) = producer.send(record) {
            assert!(
                matches!(
                    e,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ),
                "{e}"
            );
            record = r;
            std::thread::sleep(Duration::from_millis(1));
        }
        next[m.partition() as usize] = m.offset() + 1;
        done += 1;
        if done % 10_000 == 0 || done == EVENTS {
            producer.flush(Duration::from_secs(30)).unwrap();
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next.iter().enumerate().filter(|(_, o)| **o >= 0) {
                tpl.add_partition_offset(input, p as i32, Offset::Offset(*o))
                    .unwrap();
            }
            consumer.commit(&tpl, CommitMode::Sync).unwrap();
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let broker = Broker::start();
    let input = "bench-in";
    broker.create_topic(input, PARTITIONS as u32);
    kafka_tool(&[
        "produce",
        "--broker",
        &broker.addr,
        "--topic",
        input,
        "--count",
        &EVENTS.to_string(),
        "--keys",
        "1000",
        "--size",
        "60",
    ]);
    let bytes_per_event = r#"{"seq": 123456, "key": "k123", "pad": ""}"#.len() + 60 + 4;
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    let dir = tempfile::tempdir().unwrap();

    // Per variant: events/s and CPU seconds per million events, one entry per round.
    let variants: [(&str, &str); 3] = [
        // The default worker count (from the CPU quota), with the admin endpoint and metrics on.
        (
            "sluice",
            "admin:\n  listen: 127.0.0.1:0\n  lag-interval-ms: 1000\n",
        ),
        // The same without the admin endpoint and with the hot-path metrics off.
        ("sluice, metrics off", "admin:\n  metrics: false\n"),
        // One worker, like the raw loop.
        ("sluice, 1 worker", "workers: 1\n"),
    ];
    let mut raw = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        let out_raw = format!("bench-raw-{round}");
        broker.create_topic(&out_raw, PARTITIONS as u32);

        let (addr, input_name, out, group) = (
            broker.addr.clone(),
            input.to_owned(),
            out_raw.clone(),
            format!("raw-{round}"),
        );
        let worker = std::thread::spawn(move || raw_loop(&addr, &input_name, &out, &group));
        raw.push(EVENTS as f64 / watch(&watcher, &out_raw));
        worker.join().unwrap();

        for (i, (_, extra)) in variants.iter().enumerate() {
            let out = format!("bench-sluice-{i}-{round}");
            broker.create_topic(&out, PARTITIONS as u32);
            let spec = write_spec(
                dir.path(),
                &format!(
                    "name: bench\n{extra}plugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {out}\noutputs:\n  out:\n    kafka: {{topic: {out}}}\n",
                    plugin("passthrough").display(),
                    broker.addr
                ),
            );
            let mut child = Command::new(&sluice)
                .args(["run", "-f"])
                .arg(&spec)
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            rates[i].push(EVENTS as f64 / watch(&watcher, &out));
            cpu[i].push(cpu_seconds(child.id()) / (EVENTS as f64 / 1e6));
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            child.wait().unwrap();
        }
        println!(
            "round {round}: raw {:.0} ev/s; {}",
            raw[round],
            variants
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!(
                    "{name} {:.0} ev/s ({:.2} CPU-s per M events)",
                    rates[i][round], cpu[i][round]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let raw = median(raw);
    let mb = |evs: f64| evs * bytes_per_event as f64 / 1e6;
    println!(
        "Kafka -> passthrough -> Kafka, {EVENTS} events x ~{bytes_per_event} B (key + value), {PARTITIONS} partitions, median of {ROUNDS}"
    );
    println!(
        "{:>20} {:>12} {:>8} {:>10} {:>16}",
        "", "events/s", "MB/s", "vs raw", "CPU-s/M events"
    );
    println!(
        "{:>20} {raw:>12.0} {:>8.1} {:>10}",
        "raw rdkafka",
        mb(raw),
        "1.000x"
    );
    let medians: Vec<(f64, f64)> = rates
        .iter()
        .zip(&cpu)
        .map(|(r, c)| (median(r.clone()), median(c.clone())))
        .collect();
    for ((name, _), (rate, cpu)) in variants.iter().zip(&medians) {
        println!(
            "{name:>20} {rate:>12.0} {:>8.1} {:>9.3}x {cpu:>16.2}",
            mb(*rate),
            rate / raw
        );
    }
    // Metrics on vs off, round by round (the same broker state), then the median ratio.
    let throughput: Vec<f64> = rates[0]
        .iter()
        .zip(&rates[1])
        .map(|(on, off)| on / off)
        .collect();
    let cpu_ratio: Vec<f64> = cpu[0]
        .iter()
        .zip(&cpu[1])
        .map(|(on, off)| on / off)
        .collect();
    println!(
        "metrics on / off: throughput {:.3}x (rounds {:?}), CPU per event {:.3}x (rounds {:?})",
        median(throughput.clone()),
        throughput
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>(),
        median(cpu_ratio.clone()),
        cpu_ratio
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>(),
    );
}

/// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / hz
}
