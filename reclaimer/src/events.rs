//! Kubernetes Events the controller writes: one per released (or put back) address,
//! on the address's Node; one per change in a NetworkAttachmentDefinition's
//! address-range findings, on the NAD; one per Multus-ENI taint added or removed, on
//! the Node.
//!
//! kube-runtime's `Recorder` folds Events that share a reason and an object into one
//! series and keeps the first one's message, so six releases on a node would read as
//! one address released six times. Each Event here is its own, named as the Recorder
//! names them (`<object>.<nanoseconds>`); the per-sweep limit bounds how many a sweep
//! writes, and the guard writes only when a NAD's findings change. An Event lives in
//! its object's namespace (the API server requires it), `default` for a Node.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Resource};

/// The API server refuses an Event whose note is longer than this many bytes.
pub const NOTE_MAX: usize = 1024;

pub struct Events {
    client: kube::Client,
    controller: String,
    instance: String,
}

impl Events {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Events {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
        }
    }

    /// `warning`: something a user should look at (an address put back), not routine.
    pub async fn on_node(
        &self,
        node: &str,
        reason: &str,
        warning: bool,
        note: String,
    ) -> Result<(), kube::Error> {
        self.report(node_ref(node), "Release", reason, warning, note)
            .await
    }

    /// An Event about `regarding`, in its namespace (`default` for a cluster-scoped
    /// object); `note` is cut to what the API server accepts.
    pub async fn report(
        &self,
        regarding: ObjectReference,
        action: &str,
        reason: &str,
        warning: bool,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("object"),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            action: Some(action.into()),
            reason: Some(reason.into()),
            note: Some(fit_note(note)),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// A Node, as an Event regards it.
pub fn node_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(Node::api_version(&()).into_owned()),
        kind: Some(Node::kind(&()).into_owned()),
        name: Some(node.to_owned()),
        ..ObjectReference::default()
    }
}

/// `note` as it fits an Event: cut at a character boundary, ending in `…` when cut.
pub fn fit_note(note: String) -> String {
    if note.len() <= NOTE_MAX {
        return note;
    }
    let ellipsis = "…";
    let mut end = NOTE_MAX - ellipsis.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "a".repeat(NOTE_MAX);
        assert_eq!(fit_note(exact.clone()), exact);
        // A multi-byte character across the limit is not split.
        let long = format!("{}é{}", "a".repeat(NOTE_MAX - 3), "b".repeat(100));
        let cut = fit_note(long);
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'), "{cut}");
        assert!(cut.starts_with(&"a".repeat(NOTE_MAX - 3)));
    }
}
