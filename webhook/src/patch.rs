//! Building a JSON Patch (RFC 6902) of `add` and `move` operations against the raw pod.
//!
//! Every `add` targets one new member or one new array element; a `move` shifts one
//! element the pod already has. Arrays the pod already has are never replaced:
//! replacing them from typed structs would drop fields the types don't know (another
//! webhook's `restartPolicy: Always`, say).
//!
//! Values are kept as serialized JSON text: the injected container is rendered once at
//! start-up and spliced into every patch, instead of being rebuilt and re-serialized
//! for each review. The text is shared, not copied, into each patch.

use std::sync::Arc;

use jsonptr::{PointerBuf, Token};
use serde::Serialize;

/// A JSON value already serialized to text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json(Arc<str>);

impl Json {
    pub fn of(value: &impl Serialize) -> Json {
        Json(
            serde_json::to_string(value)
                .expect("in-memory values always serialize")
                .into(),
        )
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Add { path: PointerBuf, value: Json },
    Move { from: PointerBuf, path: PointerBuf },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    ops: Vec<Op>,
}

impl Patch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The patch as the JSON array the API expects (before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Add { path, value } => path.as_str().len() + value.0.len() + 32,
                Op::Move { from, path } => from.as_str().len() + path.as_str().len() + 40,
            })
            .sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'[');
        let pointer = |out: &mut Vec<u8>, p: &PointerBuf| {
            serde_json::to_writer(out, p.as_str()).expect("writing to a Vec cannot fail")
        };
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match op {
                Op::Add { path, value } => {
                    out.extend_from_slice(br#"{"op":"add","path":"#);
                    pointer(&mut out, path);
                    out.extend_from_slice(br#","value":"#);
                    out.extend_from_slice(value.0.as_bytes());
                }
                Op::Move { from, path } => {
                    out.extend_from_slice(br#"{"op":"move","from":"#);
                    pointer(&mut out, from);
                    out.extend_from_slice(br#","path":"#);
                    pointer(&mut out, path);
                }
            }
            out.push(b'}');
        }
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
        if !exists {
            let joined: Vec<&str> = items.iter().map(|j| j.as_str()).collect();
            self.add(
                pointer(path.iter().copied()),
                Json(format!("[{}]", joined.join(",")).into()),
            );
            return;
        }
        let (index, ordered): (&str, Box<dyn Iterator<Item = &&Json>>) = match position {
            // Inserting one by one at index 0 would reverse them.
            Position::First => ("0", Box::new(items.iter().rev())),
            Position::Last => ("-", Box::new(items.iter())),
        };
        for item in ordered {
            self.add(
                pointer(path.iter().copied().chain([index])),
                (*item).clone(),
            );
        }
    }

    /// Sets `key` in the string map at `path` (annotations, labels), creating the map
    /// when the pod has none.
    pub fn add_to_map(&mut self, path: &[&str], exists: bool, key: &str, value: &str) {
        if exists {
            self.add(pointer(path.iter().copied().chain([key])), Json::of(&value));
        } else {
            self.add(
                pointer(path.iter().copied()),
                Json::of(
                    &[(key, value)]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                ),
            );
        }
    }

    /// Moves the element at `index` of the array at `path` to its front; the elements
    /// before it each shift up by one, and none is rewritten.
    pub fn move_to_front(&mut self, path: &[&str], index: usize) {
        let index = index.to_string();
        self.ops.push(Op::Move {
            from: pointer(path.iter().copied().chain([index.as_str()])),
            path: pointer(path.iter().copied().chain(["0"])),
        });
    }

    fn add(&mut self, path: PointerBuf, value: Json) {
        self.ops.push(Op::Add { path, value });
    }
}

/// A JSON pointer from unescaped tokens: `~` and `/` in a token are escaped here.
fn pointer<'a>(tokens: impl IntoIterator<Item = &'a str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens.into_iter().map(Token::new))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let p = pointer(["metadata", "annotations", "ipmgmt.aws/mode", "a~b"]);
        assert_eq!(p.as_str(), "/metadata/annotations/ipmgmt.aws~1mode/a~0b");
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
