//! What the Kafka benchmarks share: the raw rdkafka loops sluice is compared with, a produce
//! that waits out a full queue, reading output progress and a process's CPU time, and the
//! fixed-rate latency round (`FixedRate`).

#![allow(dead_code)] // each benchmark uses its part

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Sends `record`, waiting while the producer's queue is full.
pub fn send<K, P, C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: rdkafka::producer::ProducerContext + 'static,
{
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
}

/// The raw loop: what a careful hand-written at-least-once service does: poll, produce
/// (idempotent, acks=all, key, value and headers), and every 10,000 events flush the producer
/// and commit; also when the input goes quiet, and when `stop_after` events are done (then it
/// returns; without it, it runs until killed). `consumer` adds consumer properties.
pub fn raw_loop(
    broker: &str,
    input: &str,
    output: &str,
    group: &str,
    stop_after: Option<usize>,
    consumer_properties: &[(&str, &str)],
) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in consumer_properties {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let (mut done, mut since_commit) = (0, 0);
    let mut next: Vec<(i32, i64)> = Vec::new();
    loop {
        let polled = consumer.poll(Duration::from_millis(100));
        if let Some(Err(e)) = &polled {
            eprintln!("raw loop: {e}");
        }
        let idle = polled.is_none();
        if let Some(Ok(m)) = polled {
            let mut record = BaseRecord::<[u8], [u8]>::to(output);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(p) = m.payload() {
                record = record.payload(p);
            }
            if let Some(h) = m.headers() {
                record = record.headers(h.detach());
            }
            send(&producer, record);
            match next.iter_mut().find(|(p, _)| *p == m.partition()) {
                Some(entry) => entry.1 = m.offset() + 1,
                None => next.push((m.partition(), m.offset() + 1)),
            }
            done += 1;
            since_commit += 1;
        }
        let finished = stop_after.is_some_and(|n| done >= n);
        if since_commit >= 10_000 || (since_commit > 0 && (idle || finished)) {
            producer.flush(Duration::from_secs(30)).unwrap();
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &next {
                tpl.add_partition_offset(input, *p, Offset::Offset(*o))
                    .unwrap();
            }
            consumer.commit(&tpl, CommitMode::Sync).unwrap();
            since_commit = 0;
        }
        if finished {
            return;
        }
    }
}

/// Records in `topic` (the sum of its partitions' high watermarks).
pub fn output_count(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Waits until `topic` holds `events` records; seconds from the first record to the last, and
/// the CPU seconds `pid` spent per million records in between (start-up and group join left
/// out).
pub fn watch(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    events: usize,
    pid: u32,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, i64, f64)> = None;
    loop {
        let n = output_count(consumer, topic, partitions);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n, cpu_seconds(pid)));
        }
        if n >= events as i64 {
            let (at, n0, cpu0) = first.unwrap();
            let cpu = (cpu_seconds(pid) - cpu0) / ((n - n0).max(1) as f64 / 1e6);
            return (at.elapsed().as_secs_f64(), cpu);
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: only {n} of {events} records after 300 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The value at quantile `q` (0-1).
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// The median.
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 0.5)
}

/// CPU time (user + system, every thread) process `pid` has used so far, from
/// `/proc/PID/stat` (also readable while it is a zombie, before it is reaped).
pub fn cpu_seconds(pid: u32) -> f64 {
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

/// Starts `sluice run -f SPEC` with `bin`, its stderr discarded.
pub fn run_spec(bin: &Path, spec: &Path) -> Child {
    Command::new(bin)
        .args(["run", "-f"])
        .arg(spec)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// What the tuned loop's producer context tracks per input partition: offsets sent and not yet
/// delivered, and the next offset after the last one sent.
type InFlight = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<i32, (std::collections::BTreeSet<i64>, i64)>>,
>;

/// Delivery reports of the tuned loop: a delivered record leaves the in-flight set of its input
/// partition (its opaque is the input partition and offset).
pub struct Delivered(InFlight);

impl rdkafka::ClientContext for Delivered {}

impl rdkafka::producer::ProducerContext for Delivered {
    type DeliveryOpaque = Box<(i32, i64)>;

    fn delivery(
        &self,
        result: &rdkafka::message::DeliveryResult<'_>,
        opaque: Self::DeliveryOpaque,
    ) {
        if let Err((e, _)) = result {
            panic!("tuned loop: a record was not delivered: {e}");
        }
        let (partition, offset) = *opaque;
        if let Some((sent, _)) = self.0.lock().unwrap().get_mut(&partition) {
            sent.remove(&offset);
        }
    }
}

/// The tuned raw loop, the floor a Kafka -> Kafka service cannot go below: poll, produce
/// (idempotent, acks=all, default batching), and once a second commit, per input partition,
/// what the delivery reports confirm (the lowest offset still in flight, or the next after the
/// last sent): no flush, no stop-and-wait. Runs until killed.
pub fn tuned_loop(broker: &str, input: &str, output: &str, group: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    let in_flight: InFlight = Default::default();
    let producer: ThreadedProducer<Delivered> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Delivered(in_flight.clone()))
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let mut last_commit = Instant::now();
    loop {
        if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
            let m = polled.unwrap();
            let (partition, offset) = (m.partition(), m.offset());
            {
                let mut map = in_flight.lock().unwrap();
                let entry = map.entry(partition).or_default();
                entry.0.insert(offset);
                entry.1 = offset + 1;
            }
            let mut record = BaseRecord::<[u8], [u8], Box<(i32, i64)>>::with_opaque_to(
                output,
                Box::new((partition, offset)),
            );
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(p) = m.payload() {
                record = record.payload(p);
            }
            send(&producer, record);
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            let mut tpl = TopicPartitionList::new();
            for (partition, (sent, next)) in in_flight.lock().unwrap().iter() {
                let at = sent.first().copied().unwrap_or(*next);
                tpl.add_partition_offset(input, *partition, Offset::Offset(at))
                    .unwrap();
            }
            if tpl.count() > 0 {
                let _ = consumer.commit(&tpl, CommitMode::Async);
            }
            last_commit = Instant::now();
        }
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The harness's producer for timed events (a short linger: its own delay is the same for every
/// subject).
pub fn timed_producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

/// Sends event `i` (keyed by one of 1,000 keys).
pub fn timed_send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    i: usize,
    value: &[u8],
) {
    let key = format!("k{}", i % 1000);
    send(producer, BaseRecord::to(topic).key(&key).payload(value));
}

/// A fixed-rate round: the harness produces `rate` events/s for `seconds` s into a subject's
/// input, each carrying its send time, and reads the subject's output; latency is from the send
/// to the harness reading the output record (the harness's own produce and fetch are the same
/// for every subject).
#[derive(Debug, Clone, Copy)]
pub struct FixedRate {
    pub rate: usize,
    pub seconds: usize,
    pub partitions: i32,
    /// The harness reader's `fetch.wait.max.ms` (librdkafka's default when `None`).
    pub fetch_wait_ms: Option<&'static str>,
    /// Bytes of padding in each event's value.
    pub pad: usize,
}

impl FixedRate {
    /// One event: `{"seq": i, "sent_us": t, "pad": "..."}`.
    pub fn event(&self, i: usize, sent_us: u128) -> Vec<u8> {
        format!(
            r#"{{"seq": {i}, "sent_us": {sent_us:>16}, "pad": "{}"}}"#,
            "x".repeat(self.pad)
        )
        .into_bytes()
    }

    /// Sends a warm-up event and waits for it, then `rate` events/s for `seconds` s; returns the
    /// milliseconds from send to the harness reading each output record, and the CPU seconds
    /// process `pid` spent while the timed events went through.
    pub fn measure(
        &self,
        bootstrap: &str,
        producer: &ThreadedProducer<DefaultProducerContext>,
        input: &str,
        output: &str,
        pid: u32,
    ) -> (Vec<f64>, f64) {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("reader-{output}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        if let Some(wait) = self.fetch_wait_ms {
            config.set("fetch.wait.max.ms", wait);
        }
        let reader: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(output, p, Offset::Beginning)
                .unwrap();
        }
        reader.assign(&tpl).unwrap();
        timed_send(producer, input, 0, &self.event(0, 0));
        producer.flush(Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "{output}: the warm-up event never came through"
            );
            if let Some(Ok(_)) = reader.poll(Duration::from_millis(50)) {
                break;
            }
        }
        let cpu_before = cpu_seconds(pid);
        let total = self.rate * self.seconds;
        let sender = {
            let (producer, input, this) = (producer.clone(), input.to_owned(), *self);
            std::thread::spawn(move || {
                let start = Instant::now();
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / this.rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    timed_send(&producer, &input, i + 1, &this.event(i + 1, now_us()));
                }
            })
        };
        let mut latencies = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(self.seconds as u64 + 60);
        while latencies.len() < total {
            assert!(
                Instant::now() < deadline,
                "{output}: {} of {total} timed events came through",
                latencies.len()
            );
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                let value = m.payload().unwrap();
                let at = std::str::from_utf8(value).unwrap();
                let sent: u128 = at[at.find("\"sent_us\": ").unwrap() + 11..][..16]
                    .trim()
                    .parse()
                    .unwrap();
                let ms = (now_us() - sent) as f64 / 1000.0;
                if ms > 100.0 && std::env::var_os("SLUICE_COST_DEBUG").is_some() {
                    eprintln!(
                        "slow: {ms:.0} ms, {} of {total} read, partition {} offset {}",
                        latencies.len(),
                        m.partition(),
                        m.offset()
                    );
                }
                latencies.push(ms);
            }
        }
        sender.join().unwrap();
        (latencies, cpu_seconds(pid) - cpu_before)
    }
}

/// Peak resident set size (MB) of `pid` so far (`VmHWM`).
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waits until `progress` reaches `total`; the rate (progress/s) and the CPU seconds `pid` spent
/// per million of it from the moment it reached a third.
pub fn measure_from_a_third(
    pid: u32,
    total: usize,
    what: &str,
    mut progress: impl FnMut() -> i64,
) -> (f64, f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut from: Option<(std::time::Instant, i64, f64)> = None;
    loop {
        let n = progress();
        if n >= (total / 3) as i64 && from.is_none() {
            from = Some((std::time::Instant::now(), n, cpu_seconds(pid)));
        }
        if n >= total as i64 {
            let (at, n0, cpu0) = from.unwrap();
            let done = (n - n0).max(1) as f64;
            return (
                done / at.elapsed().as_secs_f64(),
                (cpu_seconds(pid) - cpu0) / (done / 1e6),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: only {n} of {total} after 600 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
