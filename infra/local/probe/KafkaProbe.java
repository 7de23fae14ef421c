// Readiness probe of the local stack's Kafka (infra/local/lib/kafka.sh): a real round trip.
//
//   java -cp <kafka classpath>:<compiled probe> KafkaProbe BOOTSTRAP TOPIC TIMEOUT_MS
//
// Creates TOPIC if missing (1 partition, replication factor 1), produces one record inside a
// transaction (so the transaction coordinator is exercised too), then reads it back with a
// read_committed consumer. Exit 0 when the record came back within TIMEOUT_MS, 1 otherwise;
// the reason is printed on stderr.

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaProbe {
    public static void main(String[] args) {
        if (args.length != 3) {
            System.err.println("usage: KafkaProbe BOOTSTRAP TOPIC TIMEOUT_MS");
            System.exit(2);
        }
        int code;
        try {
            code = run(args[0], args[1], Long.parseLong(args[2]));
        } catch (Exception e) {
            Throwable cause = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
            System.err.println("kafka probe failed: " + cause);
            code = 1;
        }
        // Client threads must not keep the JVM alive.
        System.exit(code);
    }

    private static int run(String bootstrap, String topic, long timeoutMs) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutMs;
        int clientTimeout = (int) Math.max(1000, timeoutMs / 2);

        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        common.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, clientTimeout);
        common.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, clientTimeout);

        try (Admin admin = Admin.create(common)) {
            Set<String> names = admin.listTopics().names().get(remaining(deadline), TimeUnit.MILLISECONDS);
            if (!names.contains(topic)) {
                try {
                    admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1)))
                            .all().get(remaining(deadline), TimeUnit.MILLISECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw e;
                    }
                }
            }
        }

        String value = "probe-" + UUID.randomUUID();
        Properties p = new Properties();
        p.putAll(common);
        p.remove(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "dietstream-stack-probe");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, clientTimeout);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, clientTimeout);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        RecordMetadata meta;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            meta = producer.send(new ProducerRecord<>(topic, "probe", value))
                    .get(remaining(deadline), TimeUnit.MILLISECONDS);
            producer.commitTransaction();
        }

        Properties c = new Properties();
        c.putAll(common);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        TopicPartition tp = new TopicPartition(meta.topic(), meta.partition());
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            consumer.assign(List.of(tp));
            consumer.seek(tp, meta.offset());
            while (remaining(deadline) > 0) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(Math.min(500, remaining(deadline))))) {
                    if (value.equals(r.value())) {
                        return 0;
                    }
                }
            }
        }
        System.err.println("kafka probe: the produced record was not consumed back within " + timeoutMs + " ms");
        return 1;
    }

    private static long remaining(long deadline) throws Exception {
        long left = deadline - System.currentTimeMillis();
        if (left <= 0) {
            throw new java.util.concurrent.TimeoutException("probe deadline passed");
        }
        return left;
    }

    private KafkaProbe() {
    }
}
