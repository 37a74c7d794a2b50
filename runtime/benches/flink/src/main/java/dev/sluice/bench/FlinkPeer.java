package dev.sluice.bench;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Flink doing the benchmark's passthrough in a local MiniCluster (one JVM), at least once: a
 * checkpoint every second flushes the Kafka sink and commits the source's offsets.
 *
 * <p>Usage: {@code FlinkPeer passthrough BOOTSTRAP INPUT OUTPUT GROUP PARALLELISM}. It runs until
 * killed.
 */
public final class FlinkPeer {
    private FlinkPeer() {}

    /** Key and value as bytes. */
    static final class Bytes implements KafkaRecordDeserializationSchema<Tuple2<byte[], byte[]>> {
        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Tuple2<byte[], byte[]>> out) {
            out.collect(Tuple2.of(record.key(), record.value()));
        }

        @Override
        public TypeInformation<Tuple2<byte[], byte[]>> getProducedType() {
            return Types.TUPLE(Types.PRIMITIVE_ARRAY(Types.BYTE), Types.PRIMITIVE_ARRAY(Types.BYTE));
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 6 || !args[0].equals("passthrough")) {
            System.err.println("usage: FlinkPeer passthrough BOOTSTRAP INPUT OUTPUT GROUP PARALLELISM");
            System.exit(2);
        }
        String output = args[3];
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(Integer.parseInt(args[5]));
        env.enableCheckpointing(1000, CheckpointingMode.AT_LEAST_ONCE);
        KafkaSource<Tuple2<byte[], byte[]>> source = KafkaSource.<Tuple2<byte[], byte[]>>builder()
                .setBootstrapServers(args[1])
                .setTopics(args[2])
                .setGroupId(args[4])
                .setStartingOffsets(OffsetsInitializer.earliest())
                .setDeserializer(new Bytes())
                .build();
        KafkaSink<Tuple2<byte[], byte[]>> sink = KafkaSink.<Tuple2<byte[], byte[]>>builder()
                .setBootstrapServers(args[1])
                .setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE)
                // The same producer durability as Sluice's Kafka outputs.
                .setProperty("acks", "all")
                .setProperty("enable.idempotence", "true")
                .setRecordSerializer((KafkaRecordSerializationSchema<Tuple2<byte[], byte[]>>)
                        (record, context, timestamp) -> new ProducerRecord<>(output, record.f0, record.f1))
                .build();
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "input")
                .sinkTo(sink);
        env.execute("passthrough");
    }
}
