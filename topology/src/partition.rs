//! The partition of an aggregate: the one Kafka's Java clients would pick for the aggregate id
//! as key, so every client (Rust, Java, librdkafka's `murmur2_random`) finds an aggregate's
//! events in the same partition, whatever key the records carry (decision 1).

/// Kafka's `org.apache.kafka.common.utils.Utils.murmur2`: 32-bit MurmurHash2 with seed
/// `0x9747b28c`, over the bytes as little-endian 4-byte blocks, returned as Java's signed int.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java mixes in the length as an int: truncating it is what Java does for arrays over
    // 4 GiB, which cannot exist there.
    let mut h = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        // Java's switch falls through from case 3 to case 1.
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub const fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition, out of `partitions`, of every record of the aggregate `aggregate_id`:
/// `(murmur2(UTF-8 bytes of the id) & 0x7fffffff) % partitions`, what Kafka's Java producer
/// computes for the id as key.
///
/// # Panics
///
/// When `partitions` is not at least 1 (Java throws on the division by zero, too). A topic
/// always has a partition, so this is a caller's bug.
pub fn partition_for(aggregate_id: &str, partitions: i32) -> i32 {
    assert!(
        partitions > 0,
        "a topic has at least one partition, got {partitions}"
    );
    to_positive(murmur2(aggregate_id.as_bytes())) % partitions
}

#[cfg(test)]
mod tests;
