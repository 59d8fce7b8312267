//! What a pod asks for (`Mode`) and the form the manager then takes in it (`Form`).
//!
//! Both are closed sets matched exhaustively: a new mode fails to compile in
//! `Mode::as_str`, `Form::of` and `PerMode`, and a new form in every place that
//! differs by form. Mode's doc comments are `--help`'s descriptions of its values.

use clap::ValueEnum;

use super::request::{List, MODE_ANNOTATION};

/// The value of `ipmgmt.aws/mode`, and of `--default-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Assign the addresses once, before the app starts.
    Init,
    /// Assign them, follow changes, and release them when the pod stops.
    Sidecar,
}

impl Mode {
    /// The annotation's value. `initContainers` and `initContainer` are the spellings
    /// the hand-written sidecar this replaces used; they keep working.
    pub fn parse(value: &str) -> Result<Mode, String> {
        match value {
            "initContainers" | "initContainer" => Ok(Mode::Init),
            other => Mode::from_str(other, false).map_err(|_| {
                let names: Vec<String> = Mode::value_variants()
                    .iter()
                    .map(|mode| format!("{:?}", mode.as_str()))
                    .collect();
                let allowed = match names.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => String::new(),
                };
                format!(
                    "annotation {MODE_ANNOTATION} has value {other:?}; allowed values are {allowed} \
                     (\"initContainers\" and \"initContainer\" also mean \"init\")"
                )
            }),
        }
    }

    /// The annotation's value, which is also ipmgr's subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Sidecar => "sidecar",
        }
    }
}

/// The form the manager takes in the pod: the mode, and whether the cluster runs
/// native sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// First init container: the app starts once the addresses are assigned.
    Init,
    /// An init container with `restartPolicy: Always`, its startup probe gating the
    /// app; kubelet stops it after the app.
    NativeSidecar,
    /// A regular first container gated by a `postStart` hook, for clusters without
    /// native sidecars; kubelet stops it together with the app.
    ClassicSidecar,
}

impl Form {
    pub fn of(mode: Mode, classic_sidecar: bool) -> Form {
        match (mode, classic_sidecar) {
            (Mode::Init, _) => Form::Init,
            (Mode::Sidecar, false) => Form::NativeSidecar,
            (Mode::Sidecar, true) => Form::ClassicSidecar,
        }
    }

    /// The list the manager goes first in.
    pub fn list(self) -> List {
        match self {
            // First among init containers: later ones may need the routable addresses.
            Form::Init | Form::NativeSidecar => List::InitContainers,
            // First, so that kubelet runs its postStart gate before starting the app.
            Form::ClassicSidecar => List::Containers,
        }
    }

    /// Whether the manager keeps running and marks itself ready in a file, which its
    /// probes read.
    pub fn runs_alongside(self) -> bool {
        match self {
            Form::Init => false,
            Form::NativeSidecar | Form::ClassicSidecar => true,
        }
    }

    /// Its name in the `ipmgmt.aws/injected` annotation.
    pub fn marker(self) -> &'static str {
        match self {
            Form::Init => "init",
            Form::NativeSidecar => "native-sidecar",
            Form::ClassicSidecar => "sidecar",
        }
    }
}

/// One value for each mode. `get` matches every mode, so a new mode must be given
/// its own value before anything compiles.
#[derive(Debug)]
pub struct PerMode<T> {
    init: T,
    sidecar: T,
}

impl<T> PerMode<T> {
    pub fn new(mut value: impl FnMut(Mode) -> T) -> Self {
        PerMode {
            init: value(Mode::Init),
            sidecar: value(Mode::Sidecar),
        }
    }

    pub fn get(&self, mode: Mode) -> &T {
        match mode {
            Mode::Init => &self.init,
            Mode::Sidecar => &self.sidecar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_spellings() {
        for (value, mode) in [
            ("init", Mode::Init),
            ("initContainers", Mode::Init),
            ("initContainer", Mode::Init),
            ("sidecar", Mode::Sidecar),
        ] {
            assert_eq!(Mode::parse(value), Ok(mode), "{value}");
        }
        let err = Mode::parse("Sidecar").unwrap_err();
        assert!(
            err.contains("\"init\"") && err.contains("\"sidecar\"") && err.contains("\"Sidecar\""),
            "{err}"
        );
    }

    #[test]
    fn every_mode_is_its_own_flag_value_and_annotation_value() {
        for &mode in Mode::value_variants() {
            let flag = mode.to_possible_value().expect("no mode is skipped");
            assert_eq!(flag.get_name(), mode.as_str());
            assert_eq!(Mode::parse(mode.as_str()), Ok(mode));
            assert_eq!(*PerMode::new(|m| m).get(mode), mode);
        }
    }
}
