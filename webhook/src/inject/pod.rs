//! The parts of a pod the decision reads, borrowed from the request body. Everything
//! else in the pod is skipped, not parsed: the patch never rewrites what it did not
//! read.
//!
//! Each view is declared once with `view!` (`crate::view` says how), which gives both
//! the reader the server runs and serde's reading, the reference the first is checked
//! against (`review::read_agrees`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::json::{self, Reader};
use crate::view::{Field, view};

view! {
    #[derive(Default)]
    pub struct Pod<'a> {
        pub metadata: Meta<'a> = "metadata" or default,
        pub spec: Option<Spec<'a>> = "spec" or default,
    }
}

view! {
    #[derive(Default)]
    pub struct Meta<'a> {
        pub generate_name: Option<Cow<'a, str>> = "generateName" or default,
        pub annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>> = "annotations" or default,
    }
}

view! {
    #[derive(Default)]
    pub struct Spec<'a> {
        pub containers: Option<Vec<Container<'a>>> = "containers" or default,
        pub init_containers: Option<Vec<Container<'a>>> = "initContainers" or default,
        pub volumes: Option<Vec<Named<'a>>> = "volumes" or default,
        pub host_network: Option<bool> = "hostNetwork" or default,
        pub termination_grace_period_seconds: Option<i64> = "terminationGracePeriodSeconds" or default,
    }
}

impl Spec<'_> {
    /// Init containers first, as kubelet starts them.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container<'_>> {
        let init = self.init_containers.iter().flatten();
        init.chain(self.containers.iter().flatten())
    }
}

view! {
    #[derive(Default)]
    pub struct Container<'a> {
        pub name: Option<Cow<'a, str>> = "name" or default,
        pub resources: Option<ResourceRequirements<'a>> = "resources" or default,
    }
}

view! {
    #[derive(Default)]
    pub struct ResourceRequirements<'a> {
        pub requests: Option<ResourceList<'a>> = "requests" or default,
        pub limits: Option<ResourceList<'a>> = "limits" or default,
    }
}

view! {
    /// Only the resources that decide the QoS class; hugepages and the like are skipped.
    #[derive(Default)]
    pub struct ResourceList<'a> {
        pub cpu: Option<QuantityText<'a>> = "cpu" or default,
        pub memory: Option<QuantityText<'a>> = "memory" or default,
    }
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

view! {
    /// A volume: only its name matters here.
    pub struct Named<'a> {
        pub name: Option<Cow<'a, str>> = "name" or default,
    }
}

/// The apiserver sends quantities as strings; a bare JSON number is read too.
#[derive(Debug, PartialEq, Deserialize)]
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

impl<'de: 'a, 'a> Field<'de> for QuantityText<'a> {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        match r.peek() {
            Some(b'"') => Ok(QuantityText::Text(r.string("a string")?)),
            Some(b'-' | b'0'..=b'9') => {
                let text = r.number()?;
                // serde_json's own reading, so that a float is the float it reads.
                let number = text.parse().map_err(|e| r.error(&format!("{e}")))?;
                Ok(QuantityText::Number(number))
            }
            _ => Err(r.error("data did not match any variant of untagged enum QuantityText")),
        }
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Self as Deserialize>::deserialize(d)
    }
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
