//! Kubernetes' `v1` Secret, for the BMC credentials a Machine's `authSecretRef` names.
//!
//! As the Kubernetes API server does, `stringData` is merged into `data` (base64) when the
//! Secret is applied, so the store holds one form. Values are never shown by the API unless a
//! caller asks for them ([`redact`]).
use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FieldError;

pub const API_VERSION: &str = "v1";

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// A Secret's decoded data.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretData {
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

impl SecretData {
    /// The data of a stored Secret (which has no `spec`: its data is beside its metadata).
    pub fn of(object: &Value) -> Result<SecretData, FieldError> {
        serde_path_to_error::deserialize(object).map_err(|err| FieldError::from_path_error("", err))
    }

    /// The value of `key`, decoded; an error names the key when it is missing or not text.
    pub fn text(&self, key: &str) -> Result<String, String> {
        let encoded = self
            .data
            .get(key)
            .ok_or_else(|| format!("has no data.{key}"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| format!("data.{key} is not base64"))?;
        String::from_utf8(bytes).map_err(|_| format!("data.{key} is not UTF-8 text"))
    }
}

/// Merges `stringData` into `data` in the object as applied, and checks that every value of
/// `data` is base64. Returns the decoded data.
pub fn normalise(object: &mut Value) -> Result<SecretData, FieldError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| FieldError::new(".", "a resource must be a mapping"))?;
    let mut data = match map.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(other) => {
            return Err(FieldError::new(
                "data",
                format!("must be a mapping of keys to base64 values, not {other}"),
            ))
        }
    };
    for (key, value) in &data {
        let valid = value
            .as_str()
            .is_some_and(|text| STANDARD.decode(text).is_ok());
        if !valid {
            return Err(FieldError::new(
                format!("data.{key}"),
                "must be base64 (as Kubernetes stores it; put plain text under stringData)",
            ));
        }
    }
    match map.remove("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(plain)) => {
            for (key, value) in plain {
                let Value::String(text) = value else {
                    return Err(FieldError::new(
                        format!("stringData.{key}"),
                        "must be a string",
                    ));
                };
                data.insert(key, Value::String(STANDARD.encode(text)));
            }
        }
        Some(_) => {
            return Err(FieldError::new(
                "stringData",
                "must be a mapping of keys to strings",
            ))
        }
    }
    map.insert("data".into(), Value::Object(data));
    serde_json::from_value(Value::Object(map.clone()))
        .map_err(|err| FieldError::new(".", err.to_string()))
}

/// The object with each value of `data` replaced by [`REDACTED`]: the keys stay visible.
pub fn redact(object: &mut Value) {
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        for value in data.values_mut() {
            *value = Value::String(REDACTED.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn string_data_is_merged_into_data_as_the_api_server_does() {
        let mut object = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc"},
            "data": {"username": "YWRtaW4="},
            "stringData": {"password": "t0p-Secret"},
        });
        let secret = normalise(&mut object).unwrap();
        assert_eq!(secret.text("username").unwrap(), "admin");
        assert_eq!(secret.text("password").unwrap(), "t0p-Secret");
        assert!(object.get("stringData").is_none());
        assert_eq!(object["data"]["password"], "dDBwLVNlY3JldA==");
        assert_eq!(secret.text("other").unwrap_err(), "has no data.other");

        redact(&mut object);
        assert_eq!(
            object["data"],
            json!({"username": REDACTED, "password": REDACTED})
        );
    }

    #[test]
    fn data_that_is_not_base64_is_refused_by_key() {
        let mut object = json!({"data": {"password": "not base64!"}});
        let err = normalise(&mut object).unwrap_err();
        assert_eq!(err.path, "data.password");
    }
}
