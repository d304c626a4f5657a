//! JSON decoding whose errors name the field (`policy.metrics[0].value: ...`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes `bytes`; on failure the message starts with the path of the
/// offending field, when there is one. An object given as an array (which
/// serde would read by position: `[null, null, 2]` as a struct's third
/// field) is refused, naming the field.
pub fn decode<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let decoded: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." { inner.to_string() } else { format!("{path}: {inner}") }
    })?;
    let input: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let output = serde_json::to_value(&decoded).map_err(|e| e.to_string())?;
    match positional(&input, &output, String::new()) {
        Some(path) => Err(format!("{path}: expected an object, got an array")),
        None => Ok(decoded),
    }
}

/// The first place where the input holds an array and the decoded value an
/// object.
fn positional(input: &Value, output: &Value, path: String) -> Option<String> {
    match (input, output) {
        (Value::Array(_), Value::Object(_)) => Some(if path.is_empty() { ".".into() } else { path }),
        (Value::Object(ins), Value::Object(outs)) => ins.iter().find_map(|(key, value)| {
            let inner = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            outs.get(key).and_then(|out| positional(value, out, inner))
        }),
        (Value::Array(ins), Value::Array(outs)) => {
            ins.iter().zip(outs).enumerate().find_map(|(i, (a, b))| positional(a, b, format!("{path}[{i}]")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Inner {
        a: Option<u32>,
        b: u32,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Outer {
        inner: Inner,
        list: Vec<Inner>,
    }

    #[test]
    fn errors_name_the_field_and_arrays_are_not_objects() {
        let ok: Outer = decode(br#"{"inner": {"a": 1, "b": 2}, "list": [{"a": null, "b": 3}]}"#).unwrap();
        assert_eq!(ok.list[0].b, 3);
        let err = decode::<Outer>(br#"{"inner": {"b": "x"}, "list": []}"#).unwrap_err();
        assert!(err.starts_with("inner.b: invalid type"), "{err}");
        let err = decode::<Outer>(br#"{"inner": [null, 2], "list": []}"#).unwrap_err();
        assert_eq!(err, "inner: expected an object, got an array");
        let err = decode::<Outer>(br#"{"inner": {"b": 1}, "list": [[null, 2]]}"#).unwrap_err();
        assert_eq!(err, "list[0]: expected an object, got an array");
    }
}
