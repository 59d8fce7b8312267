//! The caller's identity-based IAM policy, evaluated as EC2 does before it acts: a
//! request is allowed when, for every resource it touches, some `Allow` statement
//! names its action, matches that resource, and all of that statement's conditions
//! hold for it. Only what the project's policies use is understood: `Action` lists,
//! `Resource` `*` or `arn:aws:ec2:*:*:<type>/*`, and `StringEquals` on
//! `ec2:ResourceTag/KEY` (or `aws:ResourceTag/KEY`), `aws:RequestTag/KEY` and
//! `ec2:CreateAction`. A condition key the request does not carry for a resource does
//! not hold, as IAM evaluates `StringEquals`. Anything else panics, so the fake never
//! guesses at a policy it cannot read.

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Clone, Debug)]
struct Statement {
    actions: Vec<String>,
    /// `None`: `*`; else the resource types (`network-interface`, `subnet`, …).
    types: Option<Vec<String>>,
    conditions: Vec<Condition>,
}

#[derive(Clone, Debug)]
enum Condition {
    ResourceTag(String, String),
    RequestTag(String, String),
    CreateAction(String),
}

/// One resource a request touches: its type and, when it exists already, its tags.
#[derive(Clone, Debug)]
pub struct Resource<'a> {
    pub kind: &'a str,
    pub tags: Option<&'a [(String, String)]>,
}

/// What IAM sees of a request: the resources it touches (none: `*` only), the tags it
/// asks for on what it creates, and the action that creates them (for `CreateTags`).
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    pub resources: Vec<Resource<'a>>,
    pub request_tags: &'a [(String, String)],
    pub create_action: Option<&'a str>,
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
                let types = match resources == ["*"] {
                    true => None,
                    false => Some(
                        resources
                            .iter()
                            .map(|r| {
                                let kind = r
                                    .strip_prefix("arn:aws:ec2:*:*:")
                                    .and_then(|rest| rest.strip_suffix("/*"))
                                    .unwrap_or_else(|| panic!("resource {r} is not understood"));
                                kind.to_owned()
                            })
                            .collect(),
                    ),
                };
                let mut conditions = Vec::new();
                if let Some(condition) = s.get("Condition") {
                    for (operator, keys) in condition.as_object().expect("a condition block") {
                        assert_eq!(operator, "StringEquals", "only StringEquals is understood");
                        for (key, value) in keys.as_object().expect("condition keys") {
                            let value = strings(value);
                            assert_eq!(value.len(), 1, "one value per condition key");
                            let value = value[0].clone();
                            let tag = |prefix: &str| key.strip_prefix(prefix).map(str::to_owned);
                            conditions.push(
                                match (
                                    tag("ec2:ResourceTag/").or_else(|| tag("aws:ResourceTag/")),
                                    tag("aws:RequestTag/"),
                                ) {
                                    (Some(k), _) => Condition::ResourceTag(k, value),
                                    (_, Some(k)) => Condition::RequestTag(k, value),
                                    _ if key == "ec2:CreateAction" => {
                                        Condition::CreateAction(value)
                                    }
                                    _ => panic!("condition key {key} is not understood"),
                                },
                            );
                        }
                    }
                }
                Statement {
                    actions: strings(&s["Action"]),
                    types,
                    conditions,
                }
            })
            .collect();
        Policy { statements }
    }

    /// Whether `ec2:<action>` is allowed on everything `context` touches.
    pub(super) fn allows(&self, action: &str, context: &Context) -> bool {
        let action = format!("ec2:{action}");
        let star = [Resource {
            kind: "*",
            tags: None,
        }];
        let resources = match context.resources.is_empty() {
            true => &star[..],
            false => &context.resources[..],
        };
        resources.iter().all(|resource| {
            self.statements.iter().any(|s| {
                s.actions.contains(&action)
                    && (s.types.as_ref()).is_none_or(|t| t.iter().any(|k| k == resource.kind))
                    && s.conditions.iter().all(|c| holds(c, resource, context))
            })
        })
    }
}

fn holds(condition: &Condition, resource: &Resource, context: &Context) -> bool {
    let has = |tags: &[(String, String)], k: &str, v: &str| {
        tags.iter().any(|(tk, tv)| tk == k && tv == v)
    };
    match condition {
        Condition::ResourceTag(k, v) => resource.tags.is_some_and(|t| has(t, k, v)),
        // Only the resource the request creates carries the request's tags.
        Condition::RequestTag(k, v) => resource.tags.is_none() && has(context.request_tags, k, v),
        Condition::CreateAction(a) => context.create_action == Some(a.as_str()),
    }
}
