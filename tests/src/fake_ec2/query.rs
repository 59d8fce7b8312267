//! The Query API's request: form parameters, `Prefix.N` lists and `Filter.N`
//! filters, and the address lists the assign and unassign actions take.

use super::{Fail, fail};

pub(super) struct Query(pub(super) Vec<(String, String)>);

impl Query {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `Prefix.1`, `Prefix.2`, … in index order.
    pub(super) fn list(&self, prefix: &str) -> Vec<String> {
        let mut items: Vec<(u32, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
                Some((n, v.clone()))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    pub(super) fn filters(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Some(name) = self.get(&format!("Filter.{n}.Name")) else {
                break;
            };
            out.push((name.to_owned(), self.list(&format!("Filter.{n}.Value"))));
        }
        out
    }
}

impl Query {
    /// The tags `TagSpecification.N` asks for on a resource of `kind`.
    pub(super) fn tags_for(&self, kind: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Some(ty) = self.get(&format!("TagSpecification.{n}.ResourceType")) else {
                break;
            };
            if ty != kind {
                continue;
            }
            for m in 1.. {
                let Some(key) = self.get(&format!("TagSpecification.{n}.Tag.{m}.Key")) else {
                    break;
                };
                let value = self.get(&format!("TagSpecification.{n}.Tag.{m}.Value"));
                out.push((key.to_owned(), value.unwrap_or_default().to_owned()));
            }
        }
        out
    }

    /// The addresses listed under `Prefix.N`; `InvalidParameterValue` naming the first
    /// that does not parse.
    pub(super) fn addresses<T: std::str::FromStr>(&self, prefix: &str) -> Result<Vec<T>, Fail> {
        (self.list(prefix).iter())
            .map(|v| {
                v.parse().map_err(|_| {
                    fail(
                        "InvalidParameterValue",
                        format!("Invalid value '{v}' for {prefix}"),
                    )
                })
            })
            .collect()
    }
}
