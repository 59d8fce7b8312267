//! `--ipmgr-env NAME=VALUE`: one value may hold several variables, and a value may
//! hold commas.

pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// One `--ipmgr-env` value, split where a comma is followed by an upper-case `NAME=`;
/// every other comma stays in its value, as tracing filters (`info,aws_config=warn`)
/// and lists need.
pub fn split_env(value: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for (comma, _) in value.match_indices(',') {
        let next = &value[comma + 1..];
        let starts_variable = next.split_once('=').is_some_and(|(name, _)| {
            is_env_name(name)
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        if starts_variable {
            pairs.push(&value[start..comma]);
            start = comma + 1;
        }
    }
    if start < value.len() || !pairs.is_empty() {
        pairs.push(&value[start..]);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env_of(args: &[&str]) -> BTreeMap<String, String> {
        let flags = ["--image", "ipmgr:1"].iter().chain(args);
        crate::config::from_flags(flags).unwrap().ipmgr_env
    }

    #[test]
    fn ipmgr_env_values_keep_their_commas() {
        let env = env_of(&["--ipmgr-env", "IPMGR_LOG_LEVEL=info,aws_config=warn"]);
        assert_eq!(env.len(), 1, "{env:?}");
        assert_eq!(env["IPMGR_LOG_LEVEL"], "info,aws_config=warn");

        let env = env_of(&[
            "--ipmgr-env",
            "IPMGR_LOG_LEVEL=info,ipmgr=debug,IPMGR_LOG_FORMAT=json",
            "--ipmgr-env",
            "NO_PROXY=169.254.169.254,10.0.0.0/8",
            "--ipmgr-env=IPMGR_RESYNC_SECONDS=120",
        ]);
        assert_eq!(env["IPMGR_LOG_LEVEL"], "info,ipmgr=debug");
        assert_eq!(env["IPMGR_LOG_FORMAT"], "json");
        assert_eq!(env["NO_PROXY"], "169.254.169.254,10.0.0.0/8");
        assert_eq!(env["IPMGR_RESYNC_SECONDS"], "120");
        assert_eq!(env.len(), 4, "{env:?}");

        // A lower-case name after a comma is part of the value; one given on its own
        // flag is a variable.
        let env = env_of(&["--ipmgr-env", "http_proxy=http://proxy:3128"]);
        assert_eq!(env["http_proxy"], "http://proxy:3128");
        assert_eq!(split_env("A=1,"), ["A=1,"]);
        assert_eq!(split_env("A=,B="), ["A=", "B="]);
        assert_eq!(split_env("A=x,_B1=y"), ["A=x", "_B1=y"]);
        assert_eq!(split_env("A=x,1B=y"), ["A=x,1B=y"]);
        assert!(split_env("").is_empty());
        assert!(env_of(&[]).is_empty());
    }
}
