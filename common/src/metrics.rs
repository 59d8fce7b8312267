//! Metrics, named and labelled one way in every binary.
//!
//! Names: every family a binary serves is `ipmgmt_<component>_<what>`, the prefix
//! coming from the registry `Component::registry` makes, so a family registers under
//! its short name and cannot be named otherwise. Label values: an enum whose
//! variants are the values, each given its text once by `label_values!`, which also
//! makes it encodable as a Prometheus label value.

/// Re-exported for `label_values!`, so a crate using it needs no path of its own.
pub use prometheus_client;
use prometheus_client::registry::Registry;

/// The binary a metric comes from: the middle of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Webhook,
    Reclaimer,
    /// ipmgr, the IP manager in the pods.
    Manager,
}

impl Component {
    pub const fn prefix(self) -> &'static str {
        match self {
            Component::Webhook => "ipmgmt_webhook",
            Component::Reclaimer => "ipmgmt_reclaimer",
            Component::Manager => "ipmgmt_manager",
        }
    }

    /// The registry this binary's families go in, each named `<prefix>_<name>`.
    pub fn registry(self) -> Registry {
        Registry::with_prefix(self.prefix())
    }
}

/// The text of a label value.
pub trait LabelValue {
    fn label(&self) -> &'static str;
}

/// `LabelValue` and `EncodeLabelValue` for an enum, each variant with its text:
/// `label_values!(Trigger { Start => "start", Retry => "retry" });`
#[macro_export]
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order: to set a family's series to zero at
            /// start, so that a value never seen yet is still on `/metrics`.
            #[allow(dead_code)]
            pub const ALL: [Self; [$($name),+].len()] = [$(Self::$variant),+];
        }
        impl $crate::metrics::LabelValue for $ty {
            fn label(&self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }
        impl $crate::metrics::prometheus_client::encoding::EncodeLabelValue for $ty {
            fn encode(
                &self,
                encoder: &mut $crate::metrics::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                $crate::metrics::prometheus_client::encoding::EncodeLabelValue::encode(
                    &$crate::metrics::LabelValue::label(self),
                    encoder,
                )
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::LabelValue;

    #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
    enum Trigger {
        Start,
        AddressEvent,
    }

    crate::label_values!(Trigger {
        Start => "start",
        AddressEvent => "address_event",
    });

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        trigger: Trigger,
    }

    #[test]
    fn the_text_is_the_label_and_the_encoding() {
        assert_eq!(Trigger::Start.label(), "start");
        assert_eq!(Trigger::AddressEvent.label(), "address_event");
        assert_eq!(Trigger::ALL, [Trigger::Start, Trigger::AddressEvent]);
        let family = Family::<Labels, Counter>::default();
        family
            .get_or_create(&Labels {
                trigger: Trigger::AddressEvent,
            })
            .inc();
        let mut registry = Registry::default();
        registry.register("passes", "passes", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("passes_total{trigger=\"address_event\"} 1"),
            "{text}"
        );
    }
}
