//! The functions Tinkerbell adds to sprig's for templates: `formatPartition`,
//! `netmaskToPrefixLength`, `toYaml` and `fromYaml`, with the same results and errors.
use std::sync::Arc;

use gotmpl::{TemplateError, Value};
use serde_json::Value as Json;

type Result<T> = std::result::Result<T, TemplateError>;

pub fn format_partition_func(args: &[Value]) -> Result<Value> {
    match args {
        [Value::String(device), partition] => match partition.as_int() {
            Some(partition) => Ok(Value::String(format_partition(device, partition).into())),
            None => Err(TemplateError::Exec(format!(
                "formatPartition: partition {partition} is not a number"
            ))),
        },
        _ => Err(TemplateError::Exec(
            "formatPartition takes a device and a partition number".into(),
        )),
    }
}

/// Partition naming, exactly as Tinkerbell's `formatPartition`: a `/dev/disk/...` link (by-id,
/// by-path, ...) gets `-partN` (udev's names), a device whose name ends in a digit gets `pN`
/// (`/dev/nvme0n1p1`, `/dev/mmcblk0p1`, `/dev/loop0p1`), any other gets `N` (`/dev/sda1`).
pub fn format_partition(device: &str, partition: i64) -> String {
    if device.starts_with("/dev/disk/") {
        format!("{device}-part{partition}")
    } else if device.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{device}p{partition}")
    } else {
        format!("{device}{partition}")
    }
}

/// `255.255.255.0` → `"24"` (a string, as Tinkerbell's). Like Go's `net.IPMask.Size`, a mask
/// whose ones are not contiguous gives `"0"`.
pub fn netmask_to_prefix_length(args: &[Value]) -> Result<Value> {
    let [netmask] = args else {
        return Err(TemplateError::Exec(
            "netmaskToPrefixLength takes a netmask".into(),
        ));
    };
    let text = match netmask {
        Value::String(text) => text.to_string(),
        other => other.to_string(),
    };
    let address: std::net::IpAddr = text
        .parse()
        .map_err(|_| TemplateError::Exec(format!("invalid netmask format: {text}")))?;
    let v4 = match address {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .ok_or_else(|| TemplateError::Exec(format!("netmask must be IPv4: {text}")))?,
    };
    let bits = u32::from(v4);
    let ones = bits.leading_ones();
    let contiguous = bits.checked_shl(ones).unwrap_or(0) == 0;
    Ok(Value::String(
        if contiguous { ones } else { 0 }.to_string().into(),
    ))
}

/// YAML through JSON, as `sigs.k8s.io/yaml` writes it (keys sorted), without the final newline.
pub fn to_yaml(args: &[Value]) -> Result<Value> {
    let [value] = args else {
        return Err(TemplateError::Exec("toYaml takes one value".into()));
    };
    let json = json_of(value).map_err(|err| TemplateError::Exec(format!("toYaml: {err}")))?;
    let yaml = serde_yaml_ng::to_string(&json)
        .map_err(|err| TemplateError::Exec(format!("toYaml: {err}")))?;
    Ok(Value::String(
        yaml.strip_suffix('\n').unwrap_or(&yaml).into(),
    ))
}

/// YAML to a template value; numbers become floats, as Go's JSON decoding makes them.
pub fn from_yaml(args: &[Value]) -> Result<Value> {
    let [Value::String(text)] = args else {
        return Err(TemplateError::Exec("fromYaml takes a string".into()));
    };
    if text.is_empty() {
        return Err(TemplateError::Exec("fromYaml: empty YAML input".into()));
    }
    let json: Json = serde_yaml_ng::from_str(text)
        .map_err(|err| TemplateError::Exec(format!("fromYaml: {err}")))?;
    template_value(json)
}

/// A JSON value as a template value, numbers as floats (Go's `interface{}` decoding).
pub fn template_value(json: Json) -> Result<Value> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(s.into()),
        Json::Array(items) => Value::List(
            items
                .into_iter()
                .map(template_value)
                .collect::<Result<Vec<_>>>()?
                .into(),
        ),
        Json::Object(map) => Value::Map(Arc::new(
            map.into_iter()
                .map(|(key, value)| Ok((Arc::from(key), template_value(value)?)))
                .collect::<Result<_>>()?,
        )),
    })
}

/// A template value as JSON; a function has no JSON form, as in Go.
pub fn json_of(value: &Value) -> std::result::Result<Json, String> {
    Ok(match value {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => Json::from(*n),
        Value::Uint(n) => Json::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("json: unsupported value: {f}"))?,
        Value::String(s) => Json::String(s.to_string()),
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(json_of)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Map(map) => Json::Object(
            map.iter()
                .map(|(key, value)| Ok((key.to_string(), json_of(value)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        other => return Err(format!("json: unsupported type: {}", other.type_name())),
    })
}
