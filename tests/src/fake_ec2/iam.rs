//! The caller's identity-based IAM policy, evaluated as EC2 does before it acts: a
//! request is allowed when an `Allow` statement names its action, matches its
//! resource, and all of that statement's conditions hold. Only what
//! `deploy/iam-policy.json` uses is understood: `Action` lists, `Resource` `*` or
//! network-interface ARNs, and `StringEquals` on `ec2:ResourceTag/KEY`. Anything else
//! panics, so the fake never guesses at a policy it cannot read.

use serde_json::Value;

use super::Eni;

#[derive(Clone, Debug)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Clone, Debug)]
struct Statement {
    actions: Vec<String>,
    /// `*`, or only network interfaces.
    any_resource: bool,
    /// `ec2:ResourceTag/KEY` = value, all of which must hold.
    tags: Vec<(String, String)>,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("policy lists hold strings").to_owned())
            .collect(),
        other => panic!("policy value {other} is neither a string nor a list"),
    }
}

impl Policy {
    pub fn parse(policy: &Value) -> Policy {
        let statements = policy["Statement"]
            .as_array()
            .expect("a policy has a Statement list")
            .iter()
            .map(|s| {
                assert_eq!(s["Effect"], "Allow", "only Allow statements are understood");
                let resources = strings(&s["Resource"]);
                let any_resource = resources == ["*"];
                assert!(
                    any_resource
                        || resources
                            .iter()
                            .all(|r| r.starts_with("arn:aws:ec2:")
                                && r.contains(":network-interface/")),
                    "resources {resources:?} are not understood"
                );
                let mut tags = Vec::new();
                if let Some(condition) = s.get("Condition") {
                    for (operator, keys) in condition.as_object().expect("a condition block") {
                        assert_eq!(operator, "StringEquals", "only StringEquals is understood");
                        for (key, value) in keys.as_object().expect("condition keys") {
                            let tag = key
                                .strip_prefix("ec2:ResourceTag/")
                                .unwrap_or_else(|| panic!("condition key {key} is not understood"));
                            let value = strings(value);
                            assert_eq!(value.len(), 1, "one value per tag condition");
                            tags.push((tag.to_owned(), value[0].clone()));
                        }
                    }
                }
                Statement {
                    actions: strings(&s["Action"]),
                    any_resource,
                    tags,
                }
            })
            .collect();
        Policy { statements }
    }

    /// Whether `ec2:<action>` is allowed, on `eni` when the request names one.
    pub(super) fn allows(&self, action: &str, eni: Option<&Eni>) -> bool {
        let action = format!("ec2:{action}");
        self.statements.iter().any(|s| {
            s.actions.contains(&action)
                && (s.any_resource || eni.is_some())
                && s.tags.iter().all(|(k, v)| {
                    eni.is_some_and(|e| e.tags.iter().any(|(tk, tv)| tk == k && tv == v))
                })
        })
    }
}
