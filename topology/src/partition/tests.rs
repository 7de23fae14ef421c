//! murmur2 and the partition of an aggregate against values from Kafka's own Java client.

use proptest::prelude::*;

use super::*;

/// `(key, Utils.murmur2(key UTF-8 bytes), partition of 3, 12, 24 and 7 partitions)`.
///
/// Computed independently with the real Java client, kafka-clients 4.1.1 (the jar in
/// `~/.m2/repository/org/apache/kafka/kafka-clients/4.1.1/`), by a throwaway `Murmur.java` run
/// with `java -cp kafka-clients-4.1.1.jar:slf4j-api-2.0.17.jar Murmur.java` that printed
/// `Utils.murmur2(key.getBytes(UTF_8))` and `Utils.toPositive(hash) % n` for each key; a few
/// were cross-checked with the producer's own `BuiltInPartitioner.partitionForKey`. The keys
/// cover every tail length (0 to 3 bytes after the 4-byte blocks), hashes with the sign bit
/// set, UUIDs as aggregate ids, and multi-byte UTF-8 (2-, 3- and 4-byte characters).
const JAVA_VECTORS: &[(&str, i32, [i32; 4])] = &[
    ("", 275_646_681, [0, 9, 9, 2]),
    ("a", -1_563_381_124, [1, 4, 4, 5]),
    ("ab", 316_155_434, [2, 2, 2, 0]),
    ("abc", 479_470_107, [0, 3, 3, 4]),
    ("abcd", -1_323_649_548, [2, 8, 20, 5]),
    ("abcde", 461_995_741, [1, 1, 13, 4]),
    ("kafka", -798_503_068, [1, 4, 4, 3]),
    ("user-42", 1_459_644_460, [1, 4, 4, 1]),
    (
        "5b0e3f5c-2a4e-4c1b-9a57-3f1d2b8e6c01",
        -508_694_677,
        [1, 7, 19, 1],
    ),
    (
        "00000000-0000-0000-0000-000000000000",
        713_427_837,
        [0, 9, 21, 3],
    ),
    (
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        1_964_707_646,
        [2, 2, 14, 6],
    ),
    ("Grüße", 1_190_824_359, [0, 3, 15, 4]),
    ("日本語", 1_431_860_170, [1, 10, 10, 6]),
    ("🍎🥦", -439_168_928, [0, 0, 0, 0]),
    ("café au lait", 1_504_550_030, [2, 2, 14, 4]),
];

const PARTITION_COUNTS: [i32; 4] = [3, 12, 24, 7];

#[test]
fn murmur2_matches_kafkas_java_client() {
    for (key, hash, _) in JAVA_VECTORS {
        assert_eq!(murmur2(key.as_bytes()), *hash, "murmur2({key:?})");
    }
}

#[test]
fn partition_for_matches_kafkas_java_client() {
    for (key, _, partitions) in JAVA_VECTORS {
        for (count, expected) in PARTITION_COUNTS.iter().zip(partitions) {
            assert_eq!(
                partition_for(key, *count),
                *expected,
                "partition_for({key:?}, {count})"
            );
        }
        assert_eq!(partition_for(key, 1), 0);
    }
}

#[test]
fn to_positive_clears_only_the_sign_bit() {
    assert_eq!(to_positive(i32::MIN), 0);
    assert_eq!(to_positive(-1), i32::MAX);
    assert_eq!(to_positive(42), 42);
}

#[test]
#[should_panic(expected = "at least one partition")]
fn zero_partitions_is_a_bug() {
    partition_for("user-42", 0);
}

proptest! {
    #[test]
    fn partition_is_always_in_range(id in any::<String>(), partitions in 1..=i32::MAX) {
        let partition = partition_for(&id, partitions);
        prop_assert!((0..partitions).contains(&partition));
    }
}
