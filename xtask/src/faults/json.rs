//! The JSON documents `faults` reads (a node's `/members` and `/partitions`, the load's
//! summary and progress lines), through serde_json, with the two lenient accessors the
//! readers share: a missing or mistyped field reads as zero or empty.

pub(crate) use serde_json::Value;

/// Parses one JSON document.
pub(crate) fn parse(text: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(text)?)
}

/// Lenient field access on a JSON object.
pub(crate) trait Fields {
    /// `get(key)` as an integer, 0 when absent or not a non-negative integer.
    fn u64_or_zero(&self, key: &str) -> u64;
    /// `get(key)` as an array, empty when absent or not an array.
    fn array_or_empty(&self, key: &str) -> &[Value];
}

impl Fields for Value {
    fn u64_or_zero(&self, key: &str) -> u64 {
        self.get(key).and_then(Self::as_u64).unwrap_or(0)
    }

    fn array_or_empty(&self, key: &str) -> &[Self] {
        self.get(key)
            .and_then(Self::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_fields() {
        let v = parse(r#"{"n": 3, "neg": -1, "list": [1, "a"], "s": "x"}"#).unwrap();
        assert_eq!(v.u64_or_zero("n"), 3);
        assert_eq!(v.u64_or_zero("neg"), 0);
        assert_eq!(v.u64_or_zero("missing"), 0);
        assert_eq!(v.array_or_empty("list").len(), 2);
        assert!(v.array_or_empty("s").is_empty());
        assert!(parse("[1,").is_err());
    }
}
