//! Registry credentials: `wasmbento login` and the user's docker config.
//!
//! Credentials are looked up per registry host (`host[:port]`), first in
//! `$WASMBENTO_HOME/auth.json` (written by `wasmbento login`), then in
//! docker's `config.json` (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`). Both use docker's format:
//! `{"auths": {"<registry>": {"auth": base64("user:password")}}}`. A
//! credential is only ever used for the registry it is filed under.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.username)
    }
}

#[derive(Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Everything else in docker's file is kept as it is.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// The files searched, in order.
fn config_files(store_root: &Path) -> Vec<PathBuf> {
    let mut files = vec![store_root.join("auth.json")];
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => files.push(PathBuf::from(dir).join("config.json")),
        None => files.extend(dirs::home_dir().map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The key docker files a registry under: the host, with Docker Hub's
/// historical aliases.
fn matches(key: &str, registry: &str) -> bool {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (hub(host) && hub(registry))
}

/// The credentials filed for `registry`, if any.
pub fn find(store_root: &Path, registry: &str) -> Result<Option<Credentials>> {
    for file in config_files(store_root) {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        let config: ConfigFile = match serde_json::from_slice(&bytes) {
            Ok(config) => config,
            // A broken file must not block anonymous access elsewhere.
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", file.display());
                continue;
            }
        };
        for (key, entry) in &config.auths {
            if !matches(key, registry) {
                continue;
            }
            if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
                return Ok(Some(Credentials { username: username.clone(), password: password.clone() }));
            }
            if let Some(auth) = &entry.auth {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .with_context(|| format!("{}: auths.{key}.auth is not base64", file.display()))?;
                let text = String::from_utf8(decoded)?;
                let (username, password) = text
                    .split_once(':')
                    .ok_or_else(|| anyhow!("{}: auths.{key}.auth is not user:password", file.display()))?;
                return Ok(Some(Credentials { username: username.into(), password: password.into() }));
            }
        }
    }
    Ok(None)
}

/// Files credentials for `registry` in `$WASMBENTO_HOME/auth.json`
/// (readable by the user only).
pub fn save(store_root: &Path, registry: &str, credentials: &Credentials) -> Result<()> {
    let path = store_root.join("auth.json");
    let mut config: ConfigFile = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
        Err(_) => ConfigFile::default(),
    };
    let pair = format!("{}:{}", credentials.username, credentials.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(pair);
    config.auths.insert(registry.to_string(), AuthEntry { auth: Some(auth), ..AuthEntry::default() });
    let mut tmp = tempfile::NamedTempFile::new_in(store_root)?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(&config)?)?;
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_per_registry_only() {
        let home = tempfile::tempdir().unwrap();
        let alice = Credentials { username: "alice".into(), password: "s3cr:t".into() };
        save(home.path(), "localhost:5000", &alice).unwrap();
        assert_eq!(find(home.path(), "localhost:5000").unwrap(), Some(alice.clone()));
        // Another port is another registry.
        assert_eq!(find(home.path(), "localhost:5001").unwrap(), None);
        assert_eq!(find(home.path(), "localhost").unwrap(), None);
        let bob = Credentials { username: "bob".into(), password: "pw".into() };
        save(home.path(), "registry.example.com", &bob).unwrap();
        assert_eq!(find(home.path(), "localhost:5000").unwrap(), Some(alice));
        assert_eq!(find(home.path(), "registry.example.com").unwrap(), Some(bob));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(home.path().join("auth.json")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{:?}", find(home.path(), "registry.example.com").unwrap()).contains("pw"));
    }

    #[test]
    fn docker_hub_aliases_and_url_keys_match() {
        assert!(matches("https://index.docker.io/v1/", "docker.io"));
        assert!(matches("https://ghcr.io", "ghcr.io"));
        assert!(!matches("https://ghcr.io", "ghcr.io.evil.example"));
        assert!(!matches("ghcr.io", "docker.io"));
    }
}
