//! The parts of a pod the decision reads, borrowed from the request body. Everything
//! else in the pod is skipped, not parsed: the patch never rewrites what it did not
//! read.
//!
//! Every object is read with `object`: serde's derive would also read a JSON array
//! into a struct, field by position, and a patch built for that shape does not apply
//! to the array that is really there.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

/// `T` from a JSON object, and from nothing else.
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Only<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Only(PhantomData))
}

/// `object` as a type, for options and list elements.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Obj)
    }
}

/// An optional object: absent or `null` is `None`.
fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
}

/// An optional list of objects.
fn optional_objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    struct Objects<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Objects<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of JSON objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    struct Maybe<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Maybe<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of JSON objects or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(Objects(PhantomData)).map(Some)
        }
    }
    d.deserialize_option(Maybe(PhantomData))
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: Meta<'a>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
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
    #[serde(borrow, default, deserialize_with = "optional_objects")]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default, deserialize_with = "optional_objects")]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default, deserialize_with = "optional_objects")]
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
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub resources: Option<ResourceRequirements<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResourceRequirements<'a> {
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub requests: Option<ResourceList<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
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
