//! A producer that writes one record by hand, in Kafka's own wire format (a Produce v7
//! request holding a version 2 record batch, uncompressed or zstd), for records no client
//! library writes: a header name that is not UTF-8. The stack has one broker, the leader of
//! every partition.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One record to write.
pub struct RawRecord<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Header names and values, any bytes.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub timestamp_ms: i64,
    /// Compress the batch with zstd. A topic whose `compression.type` is `zstd` keeps a zstd
    /// batch as written; any other batch it recompresses, rewriting each header name as
    /// UTF-8 (an invalid byte becomes U+FFFD).
    pub zstd: bool,
}

/// Milliseconds since the epoch: a record's timestamp now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Zig-zag varint, as a record batch's records use.
fn varint(out: &mut Vec<u8>, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    while z >= 0x80 {
        out.push((z & 0x7f) as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CRC-32C (Castagnoli), which a record batch's checksum uses.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The record batch (magic 2) holding `record` alone.
fn batch(record: &RawRecord<'_>) -> Vec<u8> {
    let mut body = vec![0]; // attributes
    varint(&mut body, 0); // timestamp delta
    varint(&mut body, 0); // offset delta
    bytes(&mut body, record.key);
    bytes(&mut body, record.value);
    varint(&mut body, record.headers.len() as i64);
    for (name, value) in record.headers {
        bytes(&mut body, name);
        bytes(&mut body, value);
    }
    let mut records = Vec::new();
    varint(&mut records, body.len() as i64);
    records.extend_from_slice(&body);
    if record.zstd {
        records = zstd::bulk::compress(&records, 3).expect("zstd compresses");
    }
    // Attributes: create time; compression 4 (zstd) or 0.
    let attributes: i16 = if record.zstd { 4 } else { 0 };
    let mut checked = Vec::new();
    checked.extend_from_slice(&attributes.to_be_bytes());
    checked.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    checked.extend_from_slice(&record.timestamp_ms.to_be_bytes()); // first timestamp
    checked.extend_from_slice(&record.timestamp_ms.to_be_bytes()); // max timestamp
    checked.extend_from_slice(&(-1i64).to_be_bytes()); // producer id: none
    checked.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    checked.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    checked.extend_from_slice(&1i32.to_be_bytes()); // records
    checked.extend_from_slice(&records);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset (the broker assigns it)
                                                  // Length from the partition leader epoch on: epoch, magic, crc, then the checked part.
    batch.extend_from_slice(&((4 + 1 + 4 + checked.len()) as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&checked).to_be_bytes());
    batch.extend_from_slice(&checked);
    batch
}

/// Writes `record` to `topic`/`partition` through the first broker of `bootstrap` with
/// `acks=all`; the offset it got, or the broker's error code.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    record: &RawRecord<'_>,
) -> Result<i64, String> {
    let broker = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
    let mut stream = TcpStream::connect(broker).map_err(|e| format!("connect {broker}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let batch = batch(record);
    let mut request = Vec::new();
    request.extend_from_slice(&0i16.to_be_bytes()); // API key: Produce
                                                    // Version 7: the first that may carry zstd batches, and not yet the flexible format.
    request.extend_from_slice(&7i16.to_be_bytes());
    request.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    string(&mut request, "dietstream-raw-produce"); // client id
    request.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    request.extend_from_slice(&(-1i16).to_be_bytes()); // acks: all
    request.extend_from_slice(&30_000i32.to_be_bytes()); // timeout ms
    request.extend_from_slice(&1i32.to_be_bytes()); // topics
    string(&mut request, topic);
    request.extend_from_slice(&1i32.to_be_bytes()); // partitions
    request.extend_from_slice(&partition.to_be_bytes());
    request.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    request.extend_from_slice(&batch);
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).map_err(|e| e.to_string())?;

    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| e.to_string())?;
    let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream
        .read_exact(&mut response)
        .map_err(|e| e.to_string())?;
    // correlation id, topics (1), topic name, partitions (1), partition, error, base offset.
    let mut at = 4 + 4;
    let name_len = i16::from_be_bytes([response[at], response[at + 1]]) as usize;
    at += 2 + name_len + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    at += 2;
    let offset = i64::from_be_bytes(response[at..at + 8].try_into().expect("8 bytes"));
    if error != 0 {
        return Err(format!("the broker answered error code {error}"));
    }
    Ok(offset)
}
