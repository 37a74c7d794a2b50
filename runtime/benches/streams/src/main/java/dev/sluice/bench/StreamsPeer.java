package dev.sluice.bench;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * Kafka Streams doing what the benchmark's Sluice pipelines do, for the peers benchmark, at least
 * once, committing every {@code commit.interval.ms}:
 *
 * <ul>
 *   <li>{@code passthrough} copies each record (key and value as bytes);
 *   <li>{@code filter-and-enrich} is the {@code filter-and-enrich} plugin with {@code min_fare: 5}
 *       and {@code drop_statuses: [cancelled]}: JSON bookings in; dropped ones gone; kept ones
 *       gain {@code fare_per_km}, {@code fare_band}, {@code long_trip} and {@code
 *       pickup_hour_utc}, keyed by {@code booking_id}. A record that is not a booking is skipped.
 *   <li>{@code windowed-count} counts records per key in 1-minute tumbling windows of their
 *       record time, in a RocksDB window store ({@code windows}) with its changelog, and writes
 *       the counts (Kafka Streams' record cache sends a window's count on commit and eviction,
 *       not per record); commits every second.
 * </ul>
 *
 * <p>A restore of a state store prints one line per partition restored, to stdout: {@code
 * restored RECORDS records in MS ms (PARTITIONS partitions)}, cumulative since the first restore
 * began.
 *
 * <p>Usage: {@code StreamsPeer JOB BOOTSTRAP INPUT OUTPUT APPLICATION_ID THREADS [STATE_DIR]}. It
 * runs until killed (SIGTERM closes it cleanly).
 */
public final class StreamsPeer {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final double MIN_FARE = 5.0;
    private static final Set<String> DROP_STATUSES = Set.of("cancelled");
    private static final double[] FARE_BANDS = {10.0, 30.0};
    private static final double LONG_TRIP_KM = 20.0;

    private StreamsPeer() {}

    /** The kept booking, enriched, keyed by its id; empty when it is dropped or no booking. */
    static List<KeyValue<byte[], byte[]>> filterAndEnrich(byte[] value) {
        try {
            JsonNode node = JSON.readTree(value);
            if (!(node instanceof ObjectNode doc)) {
                return List.of();
            }
            String id = doc.get("booking_id").asText();
            String status = doc.get("status").asText();
            double fare = doc.get("fare").asDouble();
            double km = doc.get("distance_km").asDouble();
            if (!Double.isFinite(fare) || fare < 0 || !Double.isFinite(km) || km < 0) {
                return List.of();
            }
            if (DROP_STATUSES.contains(status) || fare < MIN_FARE) {
                return List.of();
            }
            double perKm = km > 0 ? Math.round(fare / km * 100.0) / 100.0 : 0.0;
            doc.put("fare_per_km", perKm);
            doc.put("fare_band", fare < FARE_BANDS[0] ? "low" : fare < FARE_BANDS[1] ? "mid" : "high");
            doc.put("long_trip", km >= LONG_TRIP_KM);
            JsonNode ts = doc.get("pickup_ts");
            if (ts != null && ts.canConvertToLong()) {
                doc.put("pickup_hour_utc", (ts.asLong() / 3_600_000L) % 24);
            }
            return List.of(KeyValue.pair(id.getBytes(StandardCharsets.UTF_8), JSON.writeValueAsBytes(doc)));
        } catch (Exception e) {
            return List.of();
        }
    }

    /** Prints the restores' progress: records and time since the first restore began. */
    static final class Restores implements StateRestoreListener {
        private final AtomicLong started = new AtomicLong();
        private final AtomicLong records = new AtomicLong();
        private final AtomicLong partitions = new AtomicLong();

        @Override
        public void onRestoreStart(TopicPartition tp, String store, long start, long end) {
            started.compareAndSet(0, System.nanoTime());
        }

        @Override
        public void onBatchRestored(TopicPartition tp, String store, long endOffset, long restored) {}

        @Override
        public void onRestoreEnd(TopicPartition tp, String store, long restored) {
            long total = records.addAndGet(restored);
            long done = partitions.incrementAndGet();
            long ms = (System.nanoTime() - started.get()) / 1_000_000;
            synchronized (System.out) {
                System.out.println("restored " + total + " records in " + ms + " ms (" + done + " partitions)");
                System.out.flush();
            }
        }
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 6
                || args.length > 7
                || !Set.of("passthrough", "filter-and-enrich", "windowed-count").contains(args[0])) {
            System.err.println(
                    "usage: StreamsPeer passthrough|filter-and-enrich|windowed-count BOOTSTRAP INPUT OUTPUT APPLICATION_ID THREADS [STATE_DIR]");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[4]);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args[5]));
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArray().getClass());
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArray().getClass());
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // The same producer durability as Sluice's Kafka outputs.
        props.put(StreamsConfig.producerPrefix("acks"), "all");
        props.put(StreamsConfig.producerPrefix("enable.idempotence"), "true");
        if (args.length == 7) {
            props.put(StreamsConfig.STATE_DIR_CONFIG, args[6]);
        }
        // Client settings for every client of the application (security.protocol, sasl.*,
        // ssl.*: the TLS benchmark), from a properties file.
        String extra = System.getenv("STREAMS_PEER_PROPERTIES");
        if (extra != null) {
            Properties client = new Properties();
            try (java.io.FileInputStream in = new java.io.FileInputStream(extra)) {
                client.load(in);
            } catch (java.io.IOException e) {
                System.err.println(extra + ": " + e);
                System.exit(2);
            }
            props.putAll(client);
        }
        if (args[0].equals("windowed-count")) {
            // The same commit interval as Sluice's default.
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        }

        StreamsBuilder builder = new StreamsBuilder();
        if (args[0].equals("passthrough")) {
            builder.<byte[], byte[]>stream(args[2]).to(args[3]);
        } else if (args[0].equals("windowed-count")) {
            builder.<byte[], byte[]>stream(args[2])
                    .groupByKey()
                    .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofMinutes(1)))
                    .count(Materialized.as("windows"))
                    .toStream()
                    .map((window, count) -> KeyValue.pair(
                            window.key(),
                            ("{\"window_start\":" + window.window().start() + ",\"count\":" + count + "}")
                                    .getBytes(StandardCharsets.UTF_8)))
                    .to(args[3]);
        } else {
            builder.<byte[], byte[]>stream(args[2])
                    .flatMap((key, value) -> filterAndEnrich(value))
                    .to(args[3]);
        }
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        streams.setGlobalStateRestoreListener(new Restores());
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
    }
}
