package dev.sluice.tool;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The independent reference client for Sluice's delivery checks: Kafka's own Java client.
 *
 * <pre>
 * consume --broker B --topic T [--isolation read_committed|read_uncommitted] [--timeout-s S]
 *     Every record of every partition from the beginning up to the end offsets taken at the
 *     start (for read_committed: the last stable offsets, so no open transaction is waited
 *     for and no aborted record is returned), one JSON object per line: topic, partition,
 *     offset, timestamp, key, value, headers. Reads by assignment: no group is joined.
 * produce --broker B --topic T --count N [--start S] [--keys K] [--rate EVENTS_PER_S]
 *     Event i (S &lt;= i &lt; S+N) has key "k{i % K}" and value {"seq": i, "key": ...}, the
 *     same events as kafka_tool.py produce; idempotent, acks=all; --rate spreads them over
 *     time (a stream flowing while a test kills things).
 * </pre>
 *
 * Exit 0 once done; 1 with a one-line error on stderr.
 */
public final class KafkaTool {
  private KafkaTool() {}

  public static void main(String[] args) {
    try {
      if (args.length == 0) {
        throw new IllegalArgumentException("usage: KafkaTool consume|produce --broker B --topic T ...");
      }
      Map<String, String> opts = options(args);
      switch (args[0]) {
        case "consume" -> consume(opts);
        case "produce" -> produce(opts);
        default -> throw new IllegalArgumentException("unknown command " + args[0]);
      }
    } catch (Exception e) {
      System.err.println("error: " + e);
      System.exit(1);
    }
  }

  private static Map<String, String> options(String[] args) {
    Map<String, String> opts = new HashMap<>();
    for (int i = 1; i < args.length; i += 2) {
      if (!args[i].startsWith("--") || i + 1 >= args.length) {
        throw new IllegalArgumentException("expected --option value at " + args[i]);
      }
      opts.put(args[i].substring(2), args[i + 1]);
    }
    for (String required : List.of("broker", "topic")) {
      if (!opts.containsKey(required)) {
        throw new IllegalArgumentException("--" + required + " is required");
      }
    }
    return opts;
  }

  private static void consume(Map<String, String> opts) throws Exception {
    String topic = opts.get("topic");
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, opts.get("broker"));
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, opts.getOrDefault("isolation", "read_committed"));
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    Duration timeout = Duration.ofSeconds(Long.parseLong(opts.getOrDefault("timeout-s", "60")));
    StringBuilder out = new StringBuilder();
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = new ArrayList<>();
      for (PartitionInfo p : consumer.partitionsFor(topic, timeout)) {
        partitions.add(new TopicPartition(topic, p.partition()));
      }
      if (partitions.isEmpty()) {
        throw new IllegalStateException("topic " + topic + " has no partitions");
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> end = consumer.endOffsets(partitions, timeout);
      long deadline = System.nanoTime() + timeout.toNanos();
      while (!done(consumer, end)) {
        if (System.nanoTime() > deadline) {
          throw new IllegalStateException("not at the end of " + topic + " within " + timeout + ": end " + end);
        }
        for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
          deadline = System.nanoTime() + timeout.toNanos();
          json(out, r);
          if (out.length() > 1 << 16) {
            System.out.print(out);
            out.setLength(0);
          }
        }
      }
    }
    System.out.print(out);
    System.out.flush();
  }

  private static boolean done(KafkaConsumer<?, ?> consumer, Map<TopicPartition, Long> end) {
    for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
      if (consumer.position(e.getKey()) < e.getValue()) {
        return false;
      }
    }
    return true;
  }

  private static void json(StringBuilder out, ConsumerRecord<byte[], byte[]> r) {
    out.append("{\"topic\":");
    string(out, r.topic());
    out.append(",\"partition\":").append(r.partition());
    out.append(",\"offset\":").append(r.offset());
    out.append(",\"timestamp\":").append(r.timestamp());
    out.append(",\"key\":");
    string(out, r.key() == null ? null : new String(r.key(), StandardCharsets.UTF_8));
    out.append(",\"value\":");
    string(out, r.value() == null ? null : new String(r.value(), StandardCharsets.UTF_8));
    out.append(",\"headers\":{");
    boolean first = true;
    for (Header h : r.headers()) {
      if (!first) {
        out.append(',');
      }
      first = false;
      string(out, h.key());
      out.append(':');
      string(out, h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8));
    }
    out.append("}}\n");
  }

  private static void string(StringBuilder out, String s) {
    if (s == null) {
      out.append("null");
      return;
    }
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        default -> {
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    out.append('"');
  }

  private static void produce(Map<String, String> opts) throws Exception {
    String topic = opts.get("topic");
    long count = Long.parseLong(opts.getOrDefault("count", "0"));
    long start = Long.parseLong(opts.getOrDefault("start", "0"));
    long keys = Long.parseLong(opts.getOrDefault("keys", "16"));
    double rate = Double.parseDouble(opts.getOrDefault("rate", "0"));
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, opts.get("broker"));
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
    // A broker restart mid-stream: retry for up to five minutes rather than fail.
    props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "300000");
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    AtomicReference<Exception> failed = new AtomicReference<>();
    long began = System.nanoTime();
    try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
      for (long i = start; i < start + count; i++) {
        if (failed.get() != null) {
          break;
        }
        if (rate > 0) {
          long due = began + (long) ((i - start) * 1e9 / rate);
          long wait = due - System.nanoTime();
          if (wait > 0) {
            Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
          }
        }
        String key = "k" + (i % keys);
        String value = "{\"seq\": " + i + ", \"key\": \"" + key + "\"}";
        producer.send(new ProducerRecord<>(topic, key, value), (metadata, e) -> {
          if (e != null) {
            failed.compareAndSet(null, e);
          }
        });
      }
      producer.flush();
    }
    if (failed.get() != null) {
      throw failed.get();
    }
    System.err.println("produced " + count + " events to " + topic);
  }
}
