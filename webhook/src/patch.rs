//! Building a JSON Patch (RFC 6902) of `add` operations against the raw pod.
//!
//! Every operation targets one new member or one new array element. Arrays the pod
//! already has are never replaced: replacing them from typed structs would drop fields
//! the types don't know (another webhook's `restartPolicy: Always`, say).

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::{PointerBuf, Token};
use serde_json::Value;

/// Where in an array a new element goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    First,
    Last,
}

#[derive(Debug, Default)]
pub struct PatchBuilder {
    ops: Vec<PatchOperation>,
}

impl PatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn finish(self) -> Patch {
        Patch(self.ops)
    }

    /// Adds `items` to the array at `path`. Where the pod has no array there (absent or
    /// null), the array is created whole: `add` on `…/-` cannot create it.
    pub fn add_to_array(&mut self, path: &[&str], exists: bool, position: Position, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        match exists {
            true => {
                let index = match position {
                    Position::First => "0",
                    Position::Last => "-",
                };
                // Inserting one by one at index 0 would reverse them.
                let ordered: Box<dyn Iterator<Item = Value>> = match position {
                    Position::First => Box::new(items.into_iter().rev()),
                    Position::Last => Box::new(items.into_iter()),
                };
                for item in ordered {
                    self.add(pointer(path.iter().copied().chain([index])), item);
                }
            }
            false => self.add(pointer(path.iter().copied()), Value::Array(items)),
        }
    }

    /// Sets `key` in the string map at `path` (annotations, labels), creating the map
    /// when the pod has none.
    pub fn add_to_map(&mut self, path: &[&str], exists: bool, key: &str, value: Value) {
        match exists {
            true => self.add(pointer(path.iter().copied().chain([key])), value),
            false => {
                let mut map = serde_json::Map::new();
                map.insert(key.to_owned(), value);
                self.add(pointer(path.iter().copied()), Value::Object(map));
            }
        }
    }

    fn add(&mut self, path: PointerBuf, value: Value) {
        self.ops.push(PatchOperation::Add(AddOperation { path, value }));
    }
}

/// A JSON pointer from unescaped tokens: `~` and `/` in a token are escaped here.
pub fn pointer<'a>(tokens: impl IntoIterator<Item = &'a str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens.into_iter().map(Token::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(doc: &mut Value, b: PatchBuilder) {
        json_patch::patch(doc, &b.finish()).expect("patch applies");
    }

    #[test]
    fn pointer_escapes_slash_and_tilde() {
        let p = pointer(["metadata", "annotations", "ipmgmt.aws/mode", "a~b"]);
        assert_eq!(p.as_str(), "/metadata/annotations/ipmgmt.aws~1mode/a~0b");
    }

    #[test]
    fn creates_missing_array() {
        let mut doc = json!({"spec": {}});
        let mut b = PatchBuilder::new();
        b.add_to_array(&["spec", "initContainers"], false, Position::First, vec![json!(1), json!(2)]);
        apply(&mut doc, b);
        assert_eq!(doc, json!({"spec": {"initContainers": [1, 2]}}));
    }

    #[test]
    fn prepends_in_order_without_touching_existing_elements() {
        let mut doc = json!({"a": [{"x": 1, "unknownField": true}]});
        let mut b = PatchBuilder::new();
        b.add_to_array(&["a"], true, Position::First, vec![json!(1), json!(2)]);
        apply(&mut doc, b);
        assert_eq!(doc, json!({"a": [1, 2, {"x": 1, "unknownField": true}]}));
    }

    #[test]
    fn appends_in_order() {
        let mut doc = json!({"a": [0]});
        let mut b = PatchBuilder::new();
        b.add_to_array(&["a"], true, Position::Last, vec![json!(1), json!(2)]);
        apply(&mut doc, b);
        assert_eq!(doc, json!({"a": [0, 1, 2]}));
    }

    #[test]
    fn map_key_with_slash_is_added_or_map_created() {
        let mut doc = json!({"metadata": {}});
        let mut b = PatchBuilder::new();
        b.add_to_map(&["metadata", "annotations"], false, "x.io/y", json!("v"));
        apply(&mut doc, b);
        assert_eq!(doc, json!({"metadata": {"annotations": {"x.io/y": "v"}}}));

        let mut b = PatchBuilder::new();
        b.add_to_map(&["metadata", "annotations"], true, "a~/b", json!("w"));
        apply(&mut doc, b);
        assert_eq!(doc["metadata"]["annotations"]["a~/b"], json!("w"));
        assert_eq!(doc["metadata"]["annotations"]["x.io/y"], json!("v"));
    }
}
