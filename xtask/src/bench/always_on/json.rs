//! Just enough JSON to read `tracerctl -o json` and `bpftool -j`: xtask keeps its dependencies
//! to anyhow and clap, so this reads the text into a tree and offers lookups by key.

use anyhow::{Context as _, bail};

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

static NULL: Value = Value::Null;

impl Value {
    /// The member `key` of an object (`Null` when absent or not an object).
    pub(crate) fn get(&self, key: &str) -> &Value {
        match self {
            Self::Object(members) => members
                .iter()
                .find_map(|(k, v)| (k == key).then_some(v))
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// The elements of an array (none when not an array).
    pub(crate) fn items(&self) -> &[Value] {
        match self {
            Self::Array(items) => items,
            _ => &[],
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// Parses one JSON document.
pub(crate) fn parse(text: &str) -> anyhow::Result<Value> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = parser.value()?;
    parser.skip_space();
    if parser.at != parser.bytes.len() {
        bail!("trailing text after the JSON value at byte {}", parser.at);
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> anyhow::Result<u8> {
        self.skip_space();
        self.bytes
            .get(self.at)
            .copied()
            .context("the JSON text ends early")
    }

    fn expect(&mut self, byte: u8) -> anyhow::Result<()> {
        if self.peek()? != byte {
            bail!("expected {:?} at byte {}", byte as char, self.at);
        }
        self.at += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Value) -> anyhow::Result<Value> {
        if !self.bytes[self.at..].starts_with(word.as_bytes()) {
            bail!("unexpected text at byte {}", self.at);
        }
        self.at += word.len();
        Ok(value)
    }

    fn value(&mut self) -> anyhow::Result<Value> {
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => Ok(Value::String(self.string()?)),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            _ => self.number(),
        }
    }

    fn object(&mut self) -> anyhow::Result<Value> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        if self.peek()? == b'}' {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            if self.peek()? != b'"' {
                bail!("expected a key at byte {}", self.at);
            }
            let key = self.string()?;
            self.expect(b':')?;
            members.push((key, self.value()?));
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                _ => bail!("expected ',' or '}}' at byte {}", self.at),
            }
        }
    }

    fn array(&mut self) -> anyhow::Result<Value> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => bail!("expected ',' or ']' at byte {}", self.at),
            }
        }
    }

    fn string(&mut self) -> anyhow::Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let byte = *self.bytes.get(self.at).context("unterminated string")?;
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).context("a string is not UTF-8"),
                b'\\' => {
                    let escape = *self.bytes.get(self.at).context("unterminated escape")?;
                    self.at += 1;
                    let plain = match escape {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'b' => 8,
                        b'f' => 12,
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .context("short \\u escape")?;
                            self.at += 4;
                            let code = u32::from_str_radix(std::str::from_utf8(hex)?, 16)?;
                            // Surrogate pairs never occur in what this reads; keep a stand-in.
                            let c = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                            continue;
                        }
                        other => other,
                    };
                    out.push(plain);
                }
                other => out.push(other),
            }
        }
    }

    fn number(&mut self) -> anyhow::Result<Value> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at])?;
        let number = text
            .parse()
            .with_context(|| format!("{text:?} at byte {start} is not a JSON value"))?;
        Ok(Value::Number(number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tracerctl_pods_output() {
        let text = r#"{"pods":[{"namespace":"a","name":"p\u00e9","containers":[{"tracing":"auto",
            "trend":{"class":"growing","time_to_limit_ns":null,"bytes_per_second":-1.5e3},
            "processes":[{"pid":12,"traced":true}]}]}],"other_processes":[]}"#;
        let value = parse(text).expect("valid JSON");
        let pod = &value.get("pods").items()[0];
        assert_eq!(pod.get("name").as_str(), Some("pé"));
        let container = &pod.get("containers").items()[0];
        assert_eq!(
            container.get("trend").get("class").as_str(),
            Some("growing")
        );
        assert_eq!(
            container.get("trend").get("bytes_per_second").as_f64(),
            Some(-1500.0)
        );
        assert_eq!(container.get("trend").get("time_to_limit_ns"), &Value::Null);
        let process = &container.get("processes").items()[0];
        assert_eq!(process.get("traced").as_bool(), Some(true));
        assert!(value.get("missing").items().is_empty());
    }

    #[test]
    fn rejects_truncated_text() {
        assert!(parse(r#"{"pods":[1,2"#).is_err());
        assert!(parse("[1] x").is_err());
    }
}
