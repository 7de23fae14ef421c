//! Encode and decode cost per record, for a small event (water logged), a typical one (a meal
//! of three foods) and a large one (a meal of twenty), through the codec (writer schema cached;
//! the writer is this build's schema, so it decodes positionally), and for comparison through
//! `serde_avro_fast` with the same writer schema (the codec's path for other writers) and
//! through `apache_avro::Value`.
//!
//! Run: `cargo bench -p dietstream-schemas --bench codec`. The registry is the in-memory one,
//! so nothing but the codec is measured once its caches are warm.

use apache_avro::reader::datum::GenericDatumReader;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, Record};
use dietstream_schemas::registry::InMemoryRegistry;
use dietstream_schemas::types::{MealLogged, WaterIntakeLogged};
use futures::FutureExt;
use serde_json::json;
use std::hint::black_box;
use std::str::FromStr;

fn header(event_type: &str) -> serde_json::Value {
    json!({
        "event_id": "7f1f8f0e-2a7e-4d1b-9a4e-2f6a4c1d9b10",
        "event_type": event_type,
        "aggregate_id": "user-1234567",
        "aggregate_type": "USER",
        "version": 1234,
        "timestamp": 1_764_160_000_000_000_i64,
        "user_id": "user-1234567",
        "session_id": "session-abcdef",
        "correlation_id": "0b6f3c3a-9d35-4d8e-8a43-5f2f1a9e7c21",
        "causation_id": null,
        "metadata": {"client": "ios", "app_version": "3.14.1"}
    })
}

fn water() -> WaterIntakeLogged {
    serde_json::from_value(json!({
        "header": header("nutrition.water.logged"),
        "payload": {"intake_id": "3d2f3c1e-1b7a-4a8e-9a35-0c7e5d2b6f11", "millilitres": 330,
                    "drunk_at": 1_764_159_000_000_000_i64}
    }))
    .expect("water sample")
}

fn meal(items: usize) -> MealLogged {
    let items: Vec<_> = (0..items)
        .map(|i| {
            json!({"food_id": format!("food-{i:05}"), "food_name": "Wholemeal bread, toasted",
                   "grams": 45.0, "energy_kcal": 112.5, "protein_g": 4.1,
                   "carbohydrate_g": 19.8, "fat_g": 1.3, "fibre_g": 3.2, "sugar_g": 1.1,
                   "sodium_mg": 180.0})
        })
        .collect();
    serde_json::from_value(json!({
        "header": header("nutrition.meal.logged"),
        "payload": {"meal_id": "5a0c1e7e-3c55-4b1e-8d0e-2f9b7f3d1a42", "meal_type": "BREAKFAST",
                    "eaten_at": 1_764_158_400_000_000_i64, "items": items,
                    "note": "before work", "source": "MANUAL"}
    }))
    .expect("meal sample")
}

fn bench_record<T: Record + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    label: &str,
    record: &T,
) {
    let catalog = Catalog::embedded().expect("catalog");
    let codec = Codec::new(InMemoryRegistry::default(), &catalog).expect("codec");
    let topic = "diet.events.user";
    let bytes = codec
        .encode(topic, record)
        .now_or_never()
        .expect("in-memory registry answers at once")
        .expect("encode");
    let decoded: T = codec
        .decode(&bytes)
        .now_or_never()
        .expect("cached")
        .expect("decode");
    assert_eq!(&decoded, record, "the benchmark decodes what it encoded");
    let schema = catalog.schema(T::FULL_NAME).expect("schema");

    let mut group = c.benchmark_group(format!("{label} ({} bytes)", bytes.len()));
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("encode", "codec"), |b| {
        b.iter(|| {
            codec
                .encode(topic, black_box(record))
                .now_or_never()
                .expect("cached id")
                .expect("encode")
        })
    });
    group.bench_function(BenchmarkId::new("decode", "codec"), |b| {
        b.iter(|| {
            codec
                .decode::<T>(black_box(&bytes))
                .now_or_never()
                .expect("cached writer")
                .expect("decode")
        })
    });
    let text = catalog.expanded(T::FULL_NAME).expect("expands");
    let writer = serde_avro_fast::Schema::from_str(&text).expect("serde_avro_fast schema");
    group.bench_function(BenchmarkId::new("decode", "serde_avro_fast"), |b| {
        b.iter(|| {
            serde_avro_fast::from_datum_slice::<T>(black_box(&bytes[5..]), &writer).expect("decode")
        })
    });
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("datum reader");
    group.bench_function(BenchmarkId::new("decode", "apache_avro::Value"), |b| {
        b.iter(|| {
            reader
                .read_value(&mut black_box(&bytes[5..]))
                .expect("decode")
        })
    });
    group.bench_function(
        BenchmarkId::new("decode", "apache_avro::Value then from_value"),
        |b| {
            b.iter(|| {
                let value = reader
                    .read_value(&mut black_box(&bytes[5..]))
                    .expect("decode");
                apache_avro::from_value::<T>(&value).expect("typed")
            })
        },
    );
    group.finish();
}

fn codec_benches(c: &mut Criterion) {
    bench_record(c, "small: water logged", &water());
    bench_record(c, "typical: meal of 3 foods", &meal(3));
    bench_record(c, "large: meal of 20 foods", &meal(20));
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
