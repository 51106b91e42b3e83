//! The image config: what the image asks to run (entrypoint, command, environment, working
//! directory, user, ports), read from its JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;

/// What an image's config asks for when it runs. Missing fields are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`: the program and its first arguments.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the arguments after the entrypoint (or the whole command without one).
    pub cmd: Vec<String>,
    /// `Env`: `NAME=value` entries.
    pub env: Vec<String>,
    /// `WorkingDir`: where the command starts (empty: `/`).
    pub working_dir: String,
    /// `User`: who the image says to run as. The sandbox runs every function as its own
    /// unprivileged uid, so this is recorded, not applied.
    pub user: String,
    /// `ExposedPorts`: `80/tcp`-style keys.
    pub exposed_ports: Vec<String>,
}

/// The JSON shape of a config blob (only the parts read).
#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

impl ImageConfig {
    /// Reads a config blob's JSON.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, Error> {
        let blob: ConfigBlob = serde_json::from_slice(bytes).map_err(|e| Error::ParseJson {
            what: "the config".into(),
            reason: e.to_string(),
        })?;
        let run = blob.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
        })
    }

    /// The command line the image runs: the entrypoint followed by the command.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_run_config_and_tolerates_nulls() {
        let json = br#"{"architecture":"amd64","config":{"Entrypoint":null,
            "Cmd":["/bin/sh","-c","echo hi"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/app",
            "User":"1000:1000","ExposedPorts":{"8080/tcp":{}}}}"#;
        let config = ImageConfig::parse(json).unwrap();
        assert_eq!(config.argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(config.env, ["PATH=/bin", "A=1"]);
        assert_eq!(config.working_dir, "/app");
        assert_eq!(config.user, "1000:1000");
        assert_eq!(config.exposed_ports, ["8080/tcp"]);
    }

    #[test]
    fn a_config_without_run_settings_is_empty_and_bad_json_is_refused() {
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
        let err = ImageConfig::parse(b"[1]").unwrap_err();
        assert!(err.to_string().contains("cannot parse the config"), "{err}");
    }
}
