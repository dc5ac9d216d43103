//! Records ↔ DynamoDB attributes, and the state table's error details.
//!
//! Records are serde types written one attribute per field (null fields left out) and read back
//! through JSON: an item's attributes become a JSON object, which the record (or
//! [`crate::mailbox::MailboxConfig::from_json`], which names each bad field) reads.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::StoreError;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// DynamoDB attribute → JSON (S, N, BOOL, NULL, M, L, SS, NS).
pub fn attr_to_json(value: &AttributeValue) -> serde_json::Value {
    match value {
        AttributeValue::S(s) => serde_json::Value::String(s.clone()),
        AttributeValue::N(n) => serde_json::from_str::<serde_json::Number>(n)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(n.clone())),
        AttributeValue::Bool(b) => serde_json::Value::Bool(*b),
        AttributeValue::Null(_) => serde_json::Value::Null,
        AttributeValue::M(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), attr_to_json(v)))
                .collect(),
        ),
        AttributeValue::L(l) => serde_json::Value::Array(l.iter().map(attr_to_json).collect()),
        AttributeValue::Ss(ss) => {
            serde_json::Value::Array(ss.iter().cloned().map(serde_json::Value::String).collect())
        }
        AttributeValue::Ns(ns) => {
            serde_json::Value::Array(ns.iter().cloned().map(serde_json::Value::String).collect())
        }
        _ => serde_json::Value::Null,
    }
}

/// JSON → DynamoDB attribute.
pub fn json_to_attr(value: &serde_json::Value) -> AttributeValue {
    match value {
        serde_json::Value::Null => AttributeValue::Null(true),
        serde_json::Value::Bool(b) => AttributeValue::Bool(*b),
        serde_json::Value::Number(n) => AttributeValue::N(n.to_string()),
        serde_json::Value::String(s) => AttributeValue::S(s.clone()),
        serde_json::Value::Array(a) => AttributeValue::L(a.iter().map(json_to_attr).collect()),
        serde_json::Value::Object(o) => AttributeValue::M(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
    }
}

/// An item's attributes as one JSON object.
pub fn item_to_json(item: &Item) -> serde_json::Value {
    serde_json::Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), attr_to_json(v)))
            .collect(),
    )
}

/// The item of `value` under partition key `pk` (null fields left out).
pub fn item_from<T: serde::Serialize>(pk: &str, value: &T) -> Item {
    let mut item: Item = match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(o)) => o
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), json_to_attr(v)))
            .collect(),
        _ => HashMap::new(),
    };
    item.insert("pk".into(), AttributeValue::S(pk.to_string()));
    item
}

/// The record an item holds, None when it does not read as one.
pub fn item_to<T: serde::de::DeserializeOwned>(item: &Item) -> Option<T> {
    serde_json::from_value(item_to_json(item)).ok()
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Attribute `k` as a number.
pub(crate) fn get_n<T: std::str::FromStr>(item: &Item, k: &str) -> Option<T> {
    item.get(k)?.as_n().ok()?.parse().ok()
}

/// Attribute `k` as a string.
pub(crate) fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k)?.as_s().ok().map(String::as_str)
}

pub(crate) fn store_err(operation: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        operation: operation.to_owned(),
        detail: e.to_string(),
    }
}

/// [`store_err`] naming the table and the item (`{table}: get {pk}`).
pub(crate) fn store_err_in(
    table: &str,
    operation: String,
    e: impl std::fmt::Display,
) -> StoreError {
    StoreError {
        operation: format!("{table}: {operation}"),
        detail: e.to_string(),
    }
}

/// An SDK error with its whole source chain (the top level alone says only "service error").
pub(crate) fn sdk_err<E, R>(
    operation: &'static str,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError {
        operation: operation.to_owned(),
        detail: crate::error::error_chain(&e),
    }
}
