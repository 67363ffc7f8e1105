//! A small JSON reader for the two documents `faults` reads: a node's `/members` and the
//! load's summary line. Numbers are kept as `f64`; depth is bounded.

use anyhow::{Context, bail};

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Self>),
    Object(Vec<(String, Self)>),
}

impl Value {
    /// The member `key` of an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer (as JSON numbers go).
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked to be a non-negative integer below 2^53 first"
            )]
            Self::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9.0e15 => Some(*n as u64),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Self]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&[(String, Self)]> {
        match self {
            Self::Object(o) => Some(o),
            _ => None,
        }
    }

    /// `get(key)` as an integer, 0 when absent.
    pub(crate) fn u64_or_zero(&self, key: &str) -> u64 {
        self.get(key).and_then(Self::as_u64).unwrap_or(0)
    }

    /// `get(key)` as an array, empty when absent.
    pub(crate) fn array_or_empty(&self, key: &str) -> &[Self] {
        self.get(key).and_then(Self::as_array).unwrap_or(&[])
    }
}

const MAX_DEPTH: usize = 32;

/// Parses one JSON document (surrounding whitespace allowed).
pub(crate) fn parse(text: &str) -> anyhow::Result<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        bail!("trailing characters at byte {}", p.i);
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> anyhow::Result<()> {
        self.ws();
        if self.peek() != Some(b) {
            bail!("expected {:?} at byte {}", char::from(b), self.i);
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, v: Value) -> anyhow::Result<Value> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            bail!("bad literal at byte {}", self.i)
        }
    }

    fn value(&mut self, depth: usize) -> anyhow::Result<Value> {
        if depth > MAX_DEPTH {
            bail!("nested too deeply");
        }
        self.ws();
        match self.peek().context("unexpected end of input")? {
            b'n' => self.literal("null", Value::Null),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => bail!("expected , or ] at byte {}", self.i),
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.expect(b':')?;
                    fields.push((key, self.value(depth + 1)?));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(fields));
                        }
                        _ => bail!("expected , or }} at byte {}", self.i),
                    }
                }
            }
            _ => self.number(),
        }
    }

    fn number(&mut self) -> anyhow::Result<Value> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).context("number")?;
        text.parse()
            .map(Value::Number)
            .with_context(|| format!("bad number {text:?} at byte {start}"))
    }

    fn string(&mut self) -> anyhow::Result<String> {
        if self.peek() != Some(b'"') {
            bail!("expected a string at byte {}", self.i);
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek().context("unterminated string")?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).context("string is not UTF-8"),
                b'\\' => {
                    let e = self.peek().context("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).context("short \\u escape")?;
                            self.i += 4;
                            let code = u32::from_str_radix(std::str::from_utf8(hex)?, 16)?;
                            // Surrogates (not used by our documents) become U+FFFD.
                            let c = char::from_u32(code).unwrap_or('\u{fffd}');
                            let mut buf = [0; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => bail!("bad escape at byte {}", self.i),
                    }
                }
                _ => out.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members() {
        let text = r#"[{"gossip_addr":"10.77.0.1:6969","id":"node-1","incarnation":0,
            "metadata":{"hex":"00ff","len":2},"quic_addr":"10.77.0.1:6970","state":"alive"},
            {"id":"node-2","state":"failed","x":[1,2.5,-3e2,true,false,null]}]"#;
        let v = parse(text).unwrap();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].get("id").and_then(Value::as_str), Some("node-1"));
        assert_eq!(list[1].get("state").and_then(Value::as_str), Some("failed"));
        assert_eq!(list[0].get("metadata").unwrap().u64_or_zero("len"), 2);
        let x = list[1].array_or_empty("x");
        assert_eq!(x[2], Value::Number(-300.0));
        assert_eq!(x[5], Value::Null);
    }

    #[test]
    fn strings_and_errors() {
        assert_eq!(
            parse(r#""a\"b\\c\u00e9\n""#).unwrap(),
            Value::String("a\"b\\c\u{e9}\n".into())
        );
        assert_eq!(parse("{}").unwrap(), Value::Object(vec![]));
        assert_eq!(parse(" [ ] ").unwrap(), Value::Array(vec![]));
        for bad in ["", "[1,", "{\"a\" 1}", "[1] x", "\"open", "tru", "[1 2]"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).is_err());
        assert_eq!(Value::Number(3.0).as_u64(), Some(3));
        assert_eq!(Value::Number(-1.0).as_u64(), None);
        assert_eq!(Value::Number(1.5).as_u64(), None);
    }
}
