//! The parts of a pod the decision reads, borrowed from the request body. Everything
//! else in the pod is skipped, not parsed: the patch never rewrites what it did not
//! read.
//!
//! Each view is read by hand with `json::Reader` (`read`); serde's derive on the same
//! views is the reference the readers are checked against (`review::read_agrees`).
//! In both, every object is read as an object only: serde's derive would also read a
//! JSON array into a struct, field by position, and a patch built for that shape does
//! not apply to the array that is really there (hence `object` below).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

use crate::json::{self, Reader, Seen};

/// `T` from a JSON object, and from nothing else.
pub(crate) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
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
pub(crate) fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
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

#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: Meta<'a>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<'a> {
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
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

#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub resources: Option<ResourceRequirements<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct ResourceRequirements<'a> {
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub requests: Option<ResourceList<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub limits: Option<ResourceList<'a>>,
}

/// Only the resources that decide the QoS class; hugepages and the like are skipped.
#[derive(Debug, Default, PartialEq, Deserialize)]
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

/// A volume: only its name matters here.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

const OBJECT: &str = "a JSON object";

impl<'a> Pod<'a> {
    pub fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut pod = Pod::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "metadata" => {
                    seen.first(r, 0, "metadata")?;
                    pod.metadata = Meta::read(r)?;
                }
                "spec" => {
                    seen.first(r, 1, "spec")?;
                    pod.spec = r.nullable(Spec::read)?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(pod)
    }
}

impl<'a> Meta<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut meta = Meta::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "generateName" => {
                    seen.first(r, 0, "generateName")?;
                    meta.generate_name = r.nullable(|r| r.string("a string"))?;
                }
                "annotations" => {
                    seen.first(r, 1, "annotations")?;
                    meta.annotations = r.nullable(|r| {
                        let mut map = BTreeMap::new();
                        r.object("a map", |r, key| {
                            map.insert(key, r.string("a string")?);
                            Ok(())
                        })?;
                        Ok(map)
                    })?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(meta)
    }
}

impl<'a> Spec<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut spec = Spec::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "containers" => {
                    seen.first(r, 0, "containers")?;
                    spec.containers = r.nullable(|r| objects(r, Container::read))?;
                }
                "initContainers" => {
                    seen.first(r, 1, "initContainers")?;
                    spec.init_containers = r.nullable(|r| objects(r, Container::read))?;
                }
                "volumes" => {
                    seen.first(r, 2, "volumes")?;
                    spec.volumes = r.nullable(|r| objects(r, Named::read))?;
                }
                "hostNetwork" => {
                    seen.first(r, 3, "hostNetwork")?;
                    spec.host_network = r.nullable(Reader::boolean)?;
                }
                "terminationGracePeriodSeconds" => {
                    seen.first(r, 4, "terminationGracePeriodSeconds")?;
                    spec.termination_grace_period_seconds = r.nullable(Reader::i64)?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(spec)
    }
}

/// A list of objects, each read by `read`.
fn objects<'a, T>(
    r: &mut Reader<'a>,
    read: impl Fn(&mut Reader<'a>) -> json::Result<T>,
) -> json::Result<Vec<T>> {
    // Pods hold a few containers and volumes: room for them from the start.
    let mut list = Vec::with_capacity(4);
    r.array("a list of JSON objects", |r| {
        list.push(read(r)?);
        Ok(())
    })?;
    Ok(list)
}

impl<'a> Container<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut container = Container::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "name" => {
                    seen.first(r, 0, "name")?;
                    container.name = r.nullable(|r| r.string("a string"))?;
                }
                "resources" => {
                    seen.first(r, 1, "resources")?;
                    container.resources = r.nullable(ResourceRequirements::read)?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(container)
    }
}

impl<'a> ResourceRequirements<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut resources = ResourceRequirements::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "requests" => {
                    seen.first(r, 0, "requests")?;
                    resources.requests = r.nullable(ResourceList::read)?;
                }
                "limits" => {
                    seen.first(r, 1, "limits")?;
                    resources.limits = r.nullable(ResourceList::read)?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(resources)
    }
}

impl<'a> ResourceList<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut list = ResourceList::default();
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "cpu" => {
                    seen.first(r, 0, "cpu")?;
                    list.cpu = r.nullable(QuantityText::read)?;
                }
                "memory" => {
                    seen.first(r, 1, "memory")?;
                    list.memory = r.nullable(QuantityText::read)?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(list)
    }
}

impl<'a> QuantityText<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
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
}

impl<'a> Named<'a> {
    fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut name = None;
        let mut seen = Seen::default();
        r.object(OBJECT, |r, key| {
            match &*key {
                "name" => {
                    seen.first(r, 0, "name")?;
                    name = r.nullable(|r| r.string("a string"))?;
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(Named { name })
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
