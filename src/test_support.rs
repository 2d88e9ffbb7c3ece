//! Helpers shared by the unit tests of several modules.

use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON up to four levels deep whose object keys are drawn from `keys` (so parsers
/// meet the fields they look for) or are random, with every kind of leaf.
pub fn arbitrary_json(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z_0-9 ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, move |inner| {
        let key = prop_oneof![prop::sample::select(keys).prop_map(str::to_string), "[a-z]{1,6}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
