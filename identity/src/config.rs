//! Loading a binary's config file: read it, parse the TOML (every config
//! struct refuses unknown fields), and validate what serde cannot. One error
//! type for every binary, naming the file, the field and the fix.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config struct of one binary.
pub trait Config: DeserializeOwned {
    /// The binary the config is for, as it is named in messages
    /// (`offsite-vendor`).
    const BINARY: &'static str;

    /// Checks every field's range and how the fields fit together.
    fn validate(&self) -> Result<(), Invalid>;
}

/// A field whose value cannot be used, and what to change: `problem` reads
/// on from the field's name ("is 0; set 1 to 3600 seconds").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no {binary} config file given; pass --config FILE or set {env}")]
    NotGiven {
        binary: &'static str,
        env: &'static str,
    },
    #[error(
        "cannot read config file {} ({binary}): {source}; check the --config path and its permissions",
        path.display()
    )]
    Read {
        binary: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} ({binary}) is not valid: {source}", path.display())]
    Parse {
        binary: &'static str,
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config file {} ({binary}): {invalid}", path.display())]
    Invalid {
        binary: &'static str,
        path: PathBuf,
        #[source]
        invalid: Invalid,
    },
}

impl ConfigError {
    /// The field a validation refused, if that is what went wrong.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { invalid, .. } => Some(&invalid.field),
            _ => None,
        }
    }
}

/// Reads, parses and validates the config file at `path`.
pub fn load<C: Config>(path: &Path) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        binary: C::BINARY,
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates config text read from `path` (named in errors).
pub fn parse<C: Config>(text: &str, path: &Path) -> Result<C, ConfigError> {
    let config: C = toml::from_str(text).map_err(|source| ConfigError::Parse {
        binary: C::BINARY,
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    config.validate().map_err(|invalid| ConfigError::Invalid {
        binary: C::BINARY,
        path: path.to_path_buf(),
        invalid,
    })?;
    Ok(config)
}

/// The config file named by a `--config` flag, else by the environment
/// variable `env`.
pub fn locate<C: Config>(flag: Option<&Path>, env: &'static str) -> Result<PathBuf, ConfigError> {
    match flag {
        Some(path) => Ok(path.to_path_buf()),
        None => std::env::var_os(env)
            .map(PathBuf::from)
            .ok_or(ConfigError::NotGiven {
                binary: C::BINARY,
                env,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        port: u16,
    }

    impl Config for Sample {
        const BINARY: &'static str = "offsite-sample";

        fn validate(&self) -> Result<(), Invalid> {
            if self.port == 0 {
                return Err(Invalid::new("port", "is 0; choose a port from 1 to 65535"));
            }
            Ok(())
        }
    }

    #[test]
    fn each_failure_names_the_file_and_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.toml");

        let missing = load::<Sample>(&path).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        assert!(missing.to_string().contains("sample.toml"), "{missing}");

        std::fs::write(&path, "port = 1\ncolour = 2\n").unwrap();
        let unknown = load::<Sample>(&path).unwrap_err();
        assert!(matches!(unknown, ConfigError::Parse { .. }), "{unknown}");
        assert!(unknown.to_string().contains("colour"), "{unknown}");

        std::fs::write(&path, "port = 0\n").unwrap();
        let invalid = load::<Sample>(&path).unwrap_err();
        assert_eq!(invalid.field(), Some("port"));
        let text = invalid.to_string();
        assert!(
            text.contains("offsite-sample")
                && text.contains("sample.toml")
                && text.contains("choose a port"),
            "{text}"
        );

        std::fs::write(&path, "port = 7000\n").unwrap();
        assert_eq!(load::<Sample>(&path).unwrap().port, 7000);
    }

    #[test]
    fn the_flag_wins_over_the_environment() {
        let flag = Path::new("/etc/offsite/a.toml");
        assert_eq!(
            locate::<Sample>(Some(flag), "OFFSITE_SAMPLE_UNSET_VARIABLE").unwrap(),
            flag
        );
        let err = locate::<Sample>(None, "OFFSITE_SAMPLE_UNSET_VARIABLE").unwrap_err();
        assert!(
            err.to_string().contains("OFFSITE_SAMPLE_UNSET_VARIABLE"),
            "{err}"
        );
    }
}
