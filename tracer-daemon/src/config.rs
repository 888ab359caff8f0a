//! Reading the node agent's config file: at most [`MAX_CONFIG_BYTES`], whatever the file
//! claims its size is. What it says is parsed and checked by `tracer_parse::config`,
//! re-exported here whole.

use std::{io::Read as _, path::Path};

pub use tracer_parse::config::*;

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
    /// The file is larger than any config should be.
    #[error(
        "config file {path} is {size_bytes} bytes; at most {MAX_CONFIG_BYTES} are read (use globs \
         instead of long lists)"
    )]
    TooLarge {
        /// The path.
        path: String,
        /// Its size (at least this much when it could not be measured up front).
        size_bytes: u64,
    },
    /// The file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// What is wrong, with line and column, or the key and its allowed values.
        message: String,
    },
}

/// Reads and parses a config file: at most [`MAX_CONFIG_BYTES`] are read, whatever the file
/// claims its size is.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let shown = || path.display().to_string();
    let read_error = |source| ConfigError::Read {
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let size_bytes = file.metadata().map_err(read_error)?.len();
    if size_bytes > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: shown(),
            size_bytes,
        });
    }
    let mut text = String::new();
    let read = file
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if read as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: shown(),
            size_bytes: read as u64,
        });
    }
    parse(&text).map_err(|message| ConfigError::Parse {
        path: shown(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_the_bound_is_refused_naming_the_file_and_the_bound() {
        let dir = std::env::temp_dir().join(format!("tracer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("huge.toml");
        let mut huge = String::from("# padding\n");
        while huge.len() as u64 <= MAX_CONFIG_BYTES {
            huge.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&path, &huge).expect("write");
        let error = load(&path).expect_err("too large").to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            error.contains("huge.toml") && error.contains("at most 1048576"),
            "{error}"
        );
    }
}
