//! The node agent's config file (TOML; the DaemonSet mounts it from a ConfigMap). Every key is
//! optional, unknown keys are errors (a typo must not silently select nothing), and flags given
//! on the command line add to or override what the file says.

use std::{path::Path, time::Duration};

use serde::Deserialize;

use crate::select::SelectionConfig;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Which pods to trace.
    #[serde(default)]
    pub selection: SelectionConfig,
    /// Growth windows.
    #[serde(default)]
    pub growth: GrowthSection,
    /// Map capacities.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[growth]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrowthSection {
    /// Span of history per stack, e.g. "5m".
    #[serde(default, with = "humantime_serde_option")]
    pub window: Option<Duration>,
    /// Time between samples, e.g. "10s".
    #[serde(default, with = "humantime_serde_option")]
    pub sample_interval: Option<Duration>,
}

/// `[limits]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Outstanding allocations across the node.
    pub max_allocations: Option<u32>,
    /// Distinct stacks across the node.
    pub max_stacks: Option<u32>,
    /// Unwind-table rows of binaries without frame pointers.
    pub max_unwind_rows: Option<u32>,
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// What is wrong, with line and column.
        message: String,
    },
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    })
}

/// Parses config text.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let config = parse(
            r#"
            [selection]
            namespaces = ["shop-*"]
            exclude_pods = ["*-canary"]
            max_processes = 32
            [growth]
            window = "10m"
            sample_interval = "15s"
            [limits]
            max_allocations = 1000000
            "#,
        )
        .expect("valid");
        assert_eq!(config.selection.namespaces, ["shop-*"]);
        assert_eq!(config.selection.max_processes, Some(32));
        assert_eq!(config.growth.window, Some(Duration::from_secs(600)));
        assert_eq!(config.limits.max_allocations, Some(1_000_000));
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key_and_line() {
        let error = parse("[selection]\nnamespace = [\"shop\"]\n").expect_err("typo");
        assert!(
            error.contains("namespace") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("[growth]\nwindow = \"soon\"\n").expect_err("bad duration");
        assert!(error.contains("window"), "{error}");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").expect("valid"), ConfigFile::default());
    }
}
