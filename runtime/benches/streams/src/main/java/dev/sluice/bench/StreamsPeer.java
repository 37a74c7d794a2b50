package dev.sluice.bench;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;

/**
 * Kafka Streams doing what the benchmark's Sluice pipeline does, for the peers benchmark:
 * {@code passthrough} copies each record (key and value as bytes) from the input topic to the
 * output topic, at least once, committing every {@code commit.interval.ms}.
 *
 * <p>Usage: {@code StreamsPeer passthrough BOOTSTRAP INPUT OUTPUT APPLICATION_ID THREADS}. It
 * runs until killed (SIGTERM closes it cleanly).
 */
public final class StreamsPeer {
    private StreamsPeer() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 6 || !args[0].equals("passthrough")) {
            System.err.println(
                    "usage: StreamsPeer passthrough BOOTSTRAP INPUT OUTPUT APPLICATION_ID THREADS");
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

        StreamsBuilder builder = new StreamsBuilder();
        builder.<byte[], byte[]>stream(args[2]).to(args[3]);
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
    }
}
