//! Hostile request bodies for the reference server's "garbage never stops
//! it" property tests (uploads in `server.rs`, downloads and avatars in
//! `server_downloads.rs`): JSON values of every type, keys of the request,
//! near-valid requests with fields replaced or removed, and raw bytes.

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// A JSON value of any type; `small` ints and `names` (a regex of names a
/// request could carry) make near-misses likely.
pub fn value(small: std::ops::Range<i64>, names: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        small.prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[0-9]{1,6}".prop_map(Value::from),
        names.prop_map(Value::from),
        "[A-Za-z0-9+/=]{0,12}".prop_map(Value::from),
        Just(json!([1, "a"])),
        Just(json!({"x": {}})),
    ]
    .boxed()
}

/// One of the request's keys.
pub fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(keys).prop_map(str::to_owned).boxed()
}

/// Up to two edits of a valid request: a field replaced or removed.
pub fn edits(
    keys: &'static [&'static str],
    value: BoxedStrategy<Value>,
) -> BoxedStrategy<Vec<(String, Option<Value>)>> {
    prop::collection::vec((key(keys), prop::option::of(value)), 0..3).boxed()
}

/// Applies `edits` to `v`.
pub fn edited(mut v: Value, edits: Vec<(String, Option<Value>)>) -> Value {
    for (k, val) in edits {
        match val {
            Some(val) => v[k] = val,
            None => {
                v.as_object_mut().unwrap().remove(&k);
            }
        }
    }
    v
}

/// A body: a near-valid request, an object of random fields, or raw bytes.
pub fn body(
    near_valid: BoxedStrategy<Value>,
    keys: &'static [&'static str],
    value: BoxedStrategy<Value>,
) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        near_valid.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::btree_map(key(keys), value, 0..6)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
    .boxed()
}

/// Runs `check` on `cases` values of `strategy` (no persistence file: the
/// server's state carries across cases, so a lone case would not replay).
pub fn run_cases<S: Strategy>(strategy: S, cases: u32, check: impl Fn(S::Value)) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |v| {
            check(v);
            Ok(())
        })
        .unwrap();
}
