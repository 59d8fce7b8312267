//! One Kubernetes Event per released (or put back) address, on the address's Node.
//!
//! kube-runtime's `Recorder` folds Events that share a reason and an object into one
//! series and keeps the first one's message, so six releases on a node would read as
//! one address released six times. Each release here is its own Event, named as the
//! Recorder names them (`<node>.<nanoseconds>`); the per-sweep limit bounds how many
//! a sweep writes. Events about a cluster-scoped object live in `default`.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Resource};

pub struct Events {
    api: Api<Event>,
    controller: String,
    instance: String,
}

impl Events {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Events {
            api: Api::namespaced(client, "default"),
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
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{node}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            action: Some("Release".into()),
            reason: Some(reason.into()),
            note: Some(note),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(ObjectReference {
                api_version: Some(Node::api_version(&()).into_owned()),
                kind: Some(Node::kind(&()).into_owned()),
                name: Some(node.to_owned()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        self.api
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}
