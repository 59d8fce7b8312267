//! The request's views, each declared once. `view!` turns one list of fields into the
//! struct, serde's derive on it (the reference) and `json::Reader`'s reading of it
//! (what the server runs), so the two cannot drift: a new field is one line.
//!
//! How a field's type is read is the `Field` trait, one impl per kind of value (a
//! string, a number, an optional, a list, a map, a view), each saying both readings.
//! Every view is read as a JSON object only: serde's derive alone would also read a
//! JSON array into a struct, field by position, and a patch built for that shape does
//! not apply to the array that is really there.
//!
//! A field is `name: Type = "jsonKey"` when the review must carry it (missing is an
//! error, as serde's derive says it), and `... = "jsonKey" or default` when it may be
//! absent. A field may appear once per object (a second one is an error, as serde's
//! derive says it, even after a `null`); unknown fields are skipped unread.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{Deserialize, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};

use crate::json::{self, Reader};

/// A value of a view, read both ways from text whose lifetime is `'de`.
pub trait Field<'de>: Sized {
    /// The fast reading, the server's.
    fn read(r: &mut Reader<'de>) -> json::Result<Self>;
    /// serde's reading, the reference the fast one is checked against.
    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// A `Field` as a serde type, for options, list elements and map entries.
pub struct Via<T>(pub T);

impl<'de, T: Field<'de>> Deserialize<'de> for Via<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::reference(d).map(Via)
    }
}

/// A view from a JSON object, and from nothing else, through its serde derive.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
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

/// Declares a view: see the module's header for the field syntax.
macro_rules! view {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident<'a> {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident: $ty:ty = $key:literal $(or $default:ident)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(bound(deserialize = "'de: 'a"))]
        $vis struct $name<'a> {
            $(
                $(#[$field_meta])*
                #[serde(rename = $key, deserialize_with = "crate::view::Field::reference" $(, $default)?)]
                $field_vis $field: $ty,
            )*
        }

        impl<'de: 'a, 'a> crate::view::Field<'de> for $name<'a> {
            fn read(r: &mut crate::json::Reader<'de>) -> crate::json::Result<Self> {
                $(let mut $field: Option<$ty> = None;)*
                r.object(concat!("struct ", stringify!($name)), |r, key| {
                    match &*key {
                        $($key => {
                            if $field.is_some() {
                                return Err(r.error(concat!("duplicate field `", $key, "`")));
                            }
                            $field = Some(<$ty as crate::view::Field<'de>>::read(r)?);
                        })*
                        _ => r.skip()?,
                    }
                    Ok(())
                })?;
                Ok($name {
                    $($field: crate::view::view!(@found r, $field, $key $(, $default)?),)*
                })
            }

            fn reference<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::view::object(d)
            }
        }
    };
    (@found $r:ident, $field:ident, $key:literal, default) => {
        $field.unwrap_or_default()
    };
    (@found $r:ident, $field:ident, $key:literal) => {
        $field.ok_or_else(|| $r.error(concat!("missing field `", $key, "`")))?
    };
}
pub(crate) use view;

impl<'de: 'a, 'a> Field<'de> for Cow<'a, str> {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        r.string("a string")
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
            type Value = Cow<'a, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(text))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(text.to_owned()))
            }
        }
        d.deserialize_str(Text(PhantomData))
    }
}

impl<'de> Field<'de> for bool {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        r.boolean()
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bool::deserialize(d)
    }
}

impl<'de> Field<'de> for i64 {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        r.i64()
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d)
    }
}

/// `null` is `None`.
impl<'de, T: Field<'de>> Field<'de> for Option<T> {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        r.nullable(T::read)
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<Via<T>>::deserialize(d)?.map(|v| v.0))
    }
}

impl<'de, T: Field<'de>> Field<'de> for Vec<T> {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        // A pod's lists (containers, volumes) hold a few items: room for them at once.
        let mut list = Vec::with_capacity(4);
        r.array("a list", |r| {
            list.push(T::read(r)?);
            Ok(())
        })?;
        Ok(list)
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List<T>(PhantomData<T>);
        impl<'de, T: Field<'de>> Visitor<'de> for List<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(Via(item)) = seq.next_element::<Via<T>>()? {
                    list.push(item);
                }
                Ok(list)
            }
        }
        d.deserialize_seq(List(PhantomData))
    }
}

/// A map of strings (annotations, labels): a repeated key keeps its last value.
impl<'de: 'a, 'a> Field<'de> for BTreeMap<Cow<'a, str>, Cow<'a, str>> {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        let mut map = BTreeMap::new();
        r.object("a map", |r, key| {
            map.insert(key, r.string("a string")?);
            Ok(())
        })?;
        Ok(map)
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Map<'a> {
            type Value = BTreeMap<Cow<'a, str>, Cow<'a, str>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((Via(key), Via(value))) = map.next_entry()? {
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map(PhantomData))
    }
}
