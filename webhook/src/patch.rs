//! Building a JSON Patch (RFC 6902) of `add` and `move` operations against the raw pod.
//!
//! Every `add` targets one new member or one new array element; a `move` shifts one
//! element the pod already has. Arrays the pod already has are never replaced:
//! replacing them from typed structs would drop fields the types don't know (another
//! webhook's `restartPolicy: Always`, say).
//!
//! Values are kept as serialized JSON text: the injected container is rendered once at
//! start-up and spliced into every patch, instead of being rebuilt and re-serialized
//! for each review.

use serde::Serialize;

/// A JSON value already serialized to text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json(String);

impl Json {
    pub fn of(value: &impl Serialize) -> Json {
        Json(serde_json::to_string(value).expect("in-memory values always serialize"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where in an array a new element goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    First,
    Last,
}

/// The operations written as they are added, each already JSON text: a review's patch
/// is built once and sent once, so nothing is kept to be serialized later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    /// The operations, comma-separated, without the array's brackets.
    ops: Vec<u8>,
}

impl Patch {
    /// Room for a typical patch (the manager's container, a volume, two annotations:
    /// about 1.5 KB) from the start, instead of growing into it.
    pub fn new() -> Self {
        Patch {
            ops: Vec::with_capacity(2048),
        }
    }

    /// The patch as the JSON array the API expects (before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ops.len() + 2);
        out.push(b'[');
        out.extend_from_slice(&self.ops);
        out.push(b']');
        out
    }

    /// Adds `items` to the array at `path`. Where the pod has no array there (absent or
    /// null), the array is created whole: `add` on `…/-` cannot create it.
    pub fn add_to_array(
        &mut self,
        path: &[&str],
        exists: bool,
        position: Position,
        items: &[&Json],
    ) {
        if items.is_empty() {
            return;
        }
        // The items, and room for their operations' own text.
        let text: usize = items.iter().map(|i| i.as_str().len()).sum();
        self.ops.reserve(text + 64 * items.len());
        if !exists {
            let value = self.add(path.iter().copied());
            value.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    value.push(b',');
                }
                value.extend_from_slice(item.as_str().as_bytes());
            }
            value.extend_from_slice(b"]}");
            return;
        }
        let (index, ordered): (&str, Box<dyn Iterator<Item = &&Json>>) = match position {
            // Inserting one by one at index 0 would reverse them.
            Position::First => ("0", Box::new(items.iter().rev())),
            Position::Last => ("-", Box::new(items.iter())),
        };
        for item in ordered {
            let value = self.add(path.iter().copied().chain([index]));
            value.extend_from_slice(item.as_str().as_bytes());
            value.push(b'}');
        }
    }

    /// Sets `key` in the string map at `path` (annotations, labels), creating the map
    /// when the pod has none.
    pub fn add_to_map(&mut self, path: &[&str], exists: bool, key: &str, value: &str) {
        if exists {
            let out = self.add(path.iter().copied().chain([key]));
            json(out, &value);
        } else {
            let out = self.add(path.iter().copied());
            json(out, &std::collections::BTreeMap::from([(key, value)]));
        }
        self.ops.push(b'}');
    }

    /// Moves the element at `index` of the array at `path` to its front; the elements
    /// before it each shift up by one, and none is rewritten.
    pub fn move_to_front(&mut self, path: &[&str], index: usize) {
        let index = index.to_string();
        self.next();
        self.ops.extend_from_slice(br#"{"op":"move","from":"#);
        pointer(&mut self.ops, path.iter().copied().chain([index.as_str()]));
        self.ops.extend_from_slice(br#","path":"#);
        pointer(&mut self.ops, path.iter().copied().chain(["0"]));
        self.ops.push(b'}');
    }

    /// Opens an `add` at `path`; the caller writes the value and the closing brace.
    fn add<'a>(&mut self, path: impl IntoIterator<Item = &'a str>) -> &mut Vec<u8> {
        self.next();
        self.ops.extend_from_slice(br#"{"op":"add","path":"#);
        pointer(&mut self.ops, path);
        self.ops.extend_from_slice(br#","value":"#);
        &mut self.ops
    }

    fn next(&mut self) {
        if !self.ops.is_empty() {
            self.ops.push(b',');
        }
    }
}

fn json(out: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
}

/// A JSON pointer from unescaped tokens, as a JSON string: `~` and `/` in a token are
/// escaped here as RFC 6901 says (`~0`, `~1`; the tests check it against jsonptr's
/// `Token`), and the pointer as a JSON string only when it holds what JSON escapes.
fn pointer<'a>(out: &mut Vec<u8>, tokens: impl IntoIterator<Item = &'a str>) {
    let start = out.len();
    out.push(b'"');
    for token in tokens {
        out.push(b'/');
        let mut rest = token.as_bytes();
        while let Some(at) = rest.iter().position(|&b| b == b'~' || b == b'/') {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(if rest[at] == b'~' { b"~0" } else { b"~1" });
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    }
    // A fold, not `any`: without an early exit it is vectorized.
    let escape = out[start + 1..]
        .iter()
        .fold(false, |found, &b| found | needs_escape(b));
    if escape {
        let text = String::from_utf8(out.split_off(start + 1)).expect("written from strs");
        out.truncate(start);
        json(out, &text);
    } else {
        out.push(b'"');
    }
}

/// What serde_json escapes in a string: `"`, `\` and control characters.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonptr::Token;
    use serde_json::{Value, json};

    fn apply(doc: &mut Value, p: &Patch) {
        let ops: json_patch::Patch =
            serde_json::from_slice(&p.to_bytes()).expect("patch is valid JSON Patch");
        json_patch::patch(doc, &ops).expect("patch applies");
    }

    fn j(v: Value) -> Json {
        Json::of(&v)
    }

    #[test]
    fn pointer_escapes_slash_and_tilde() {
        let mut out = Vec::new();
        pointer(
            &mut out,
            ["metadata", "annotations", "ipmgmt.aws/mode", "a~b", "\"\\"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""/metadata/annotations/ipmgmt.aws~1mode/a~0b/\"\\""#
        );
        let tokens = [
            "metadata",
            "annotations",
            "ipmgmt.aws/mode",
            "a~b",
            "\"\\",
            "",
            "~1/~0",
            "//",
            "~",
            "é/~ü",
        ];
        let mut out = Vec::new();
        pointer(&mut out, tokens);
        let text: String = serde_json::from_slice(&out).unwrap();
        let expected = jsonptr::PointerBuf::from_tokens(tokens.map(Token::new));
        assert_eq!(text, expected.as_str());
    }

    #[test]
    fn serializes_as_rfc6902_add_operations() {
        let mut p = Patch::new();
        p.add_to_map(&["metadata", "annotations"], true, "a/\"b\"", "v");
        let ops: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "add", "path": "/metadata/annotations/a~1\"b\"", "value": "v"}])
        );
        assert_eq!(Patch::new().to_bytes(), b"[]");
    }

    #[test]
    fn creates_missing_array() {
        let mut doc = json!({"spec": {}});
        let mut p = Patch::new();
        p.add_to_array(
            &["spec", "initContainers"],
            false,
            Position::First,
            &[&j(json!(1)), &j(json!(2))],
        );
        apply(&mut doc, &p);
        assert_eq!(doc, json!({"spec": {"initContainers": [1, 2]}}));
    }

    #[test]
    fn prepends_in_order_without_touching_existing_elements() {
        let mut doc = json!({"a": [{"x": 1, "unknownField": true}]});
        let mut p = Patch::new();
        p.add_to_array(&["a"], true, Position::First, &[&j(json!(1)), &j(json!(2))]);
        apply(&mut doc, &p);
        assert_eq!(doc, json!({"a": [1, 2, {"x": 1, "unknownField": true}]}));
    }

    #[test]
    fn appends_in_order() {
        let mut doc = json!({"a": [0]});
        let mut p = Patch::new();
        p.add_to_array(&["a"], true, Position::Last, &[&j(json!(1)), &j(json!(2))]);
        apply(&mut doc, &p);
        assert_eq!(doc, json!({"a": [0, 1, 2]}));
    }

    #[test]
    fn move_to_front_shifts_the_others_and_keeps_every_field() {
        let mut doc = json!({"spec": {"initContainers": [
            {"name": "a", "restartPolicy": "Always"}, {"name": "b"}, {"name": "m", "x": [1]}, {"name": "c"}]}});
        let mut p = Patch::new();
        p.move_to_front(&["spec", "initContainers"], 2);
        let ops: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "move", "from": "/spec/initContainers/2", "path": "/spec/initContainers/0"}])
        );
        apply(&mut doc, &p);
        assert_eq!(
            doc,
            json!({"spec": {"initContainers": [
                {"name": "m", "x": [1]}, {"name": "a", "restartPolicy": "Always"}, {"name": "b"}, {"name": "c"}]}})
        );
    }

    #[test]
    fn map_key_with_slash_is_added_or_map_created() {
        let mut doc = json!({"metadata": {}});
        let mut p = Patch::new();
        p.add_to_map(&["metadata", "annotations"], false, "x.io/y", "v");
        apply(&mut doc, &p);
        assert_eq!(doc, json!({"metadata": {"annotations": {"x.io/y": "v"}}}));

        let mut p = Patch::new();
        p.add_to_map(&["metadata", "annotations"], true, "a~/b", "w");
        apply(&mut doc, &p);
        assert_eq!(doc["metadata"]["annotations"]["a~/b"], json!("w"));
        assert_eq!(doc["metadata"]["annotations"]["x.io/y"], json!("v"));
    }
}
