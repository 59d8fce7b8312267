//! The parts of a pod the decision reads, borrowed from the request body. Everything
//! else in the pod is skipped, not parsed: the patch never rewrites what it did not
//! read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Meta<'a>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<'a> {
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Named<'a>>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub termination_grace_period_seconds: Option<i64>,
}

impl Spec<'_> {
    /// Init containers first, as kubelet starts them.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container<'_>> {
        let init = self.init_containers.iter().flatten();
        init.chain(self.containers.iter().flatten())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub resources: Option<ResourceRequirements<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResourceRequirements<'a> {
    #[serde(borrow, default)]
    pub requests: Option<ResourceList<'a>>,
    #[serde(borrow, default)]
    pub limits: Option<ResourceList<'a>>,
}

/// Only the resources that decide the QoS class; hugepages and the like are skipped.
#[derive(Debug, Default, Deserialize)]
pub struct ResourceList<'a> {
    #[serde(borrow, default)]
    pub cpu: Option<QuantityText<'a>>,
    #[serde(borrow, default)]
    pub memory: Option<QuantityText<'a>>,
}

impl<'a> ResourceList<'a> {
    pub fn get(&self, resource: &str) -> Option<&QuantityText<'a>> {
        match resource {
            "cpu" => self.cpu.as_ref(),
            "memory" => self.memory.as_ref(),
            _ => None,
        }
    }
}

/// The apiserver sends quantities as strings; a bare JSON number is read too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum QuantityText<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Number(serde_json::Number),
}

impl QuantityText<'_> {
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            QuantityText::Text(text) => Cow::Borrowed(text),
            QuantityText::Number(n) => Cow::Owned(n.to_string()),
        }
    }
}

/// A volume: only its name matters here.
#[derive(Debug, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

pub fn has_name(list: &Option<Vec<Named<'_>>>, name: &str) -> bool {
    list.as_ref()
        .is_some_and(|l| l.iter().any(|n| n.name.as_deref() == Some(name)))
}

/// Where the manager is in a pod that already has it.
pub fn position(list: &Option<Vec<Container<'_>>>, name: &str) -> Option<usize> {
    list.as_ref()?
        .iter()
        .position(|c| c.name.as_deref() == Some(name))
}
