//! `bento.toml`: what a bento is made of and how it is served by default.
//!
//! A plugin directory holds a *source* manifest ([`SourceManifest`]): name,
//! version, description, the models the service may load and its traffic and
//! scaling defaults. `wasmbento build` completes it into a [`BentoManifest`]
//! with the APIs the component describes, the component's digest and the
//! models resolved to exact versions, and stores that next to the component.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest in a plugin's source directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceManifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Name the guest passes to `wasi:nn` `load-by-name` → model tag.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub scaling: Scaling,
    /// Defaults of each model's runner, by the model's name above.
    #[serde(default)]
    pub runners: BTreeMap<String, RunnerConfig>,
    /// What each runner replica asks for (BentoML's `resources`).
    #[serde(default)]
    pub resources: crate::devices::Resources,
}

/// A built bento's manifest, stored as `bento.toml` beside the component.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BentoManifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// RFC 3339 time of the build.
    pub created: String,
    pub component: ComponentInfo,
    /// Name the guest uses → exact model tag (`name:version`) in the store.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default)]
    pub runners: BTreeMap<String, RunnerConfig>,
    #[serde(default)]
    pub resources: crate::devices::Resources,
    #[serde(default)]
    pub apis: Vec<ApiSpec>,
}

/// The component file of a bento.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComponentInfo {
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: u64,
}

/// One API, as the component describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    pub name: String,
    #[serde(default)]
    pub doc: String,
    /// JSON Schema of the request body, as JSON text.
    pub input_schema: String,
    /// JSON Schema of the response body, as JSON text.
    pub output_schema: String,
}

/// The longest `traffic.timeout` accepted: a day.
pub const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;

/// Traffic control for the API service (BentoML's `traffic` keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Seconds from request to response before it fails with 504.
    pub timeout: f64,
    /// Simultaneous instances; `None` means bounded only by the host.
    pub max_concurrency: Option<u32>,
    /// Linear memory each instance may use, in MiB.
    pub memory_limit_mib: u64,
    /// Where requests wait beyond `max_concurrency`.
    pub queue: crate::traffic::QueueConfig,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            timeout: 60.0,
            max_concurrency: None,
            memory_limit_mib: 256,
            queue: crate::traffic::QueueConfig::default(),
        }
    }
}

/// Replica bounds and autoscaling policy (see [`crate::scale::policy`]).
pub type Scaling = crate::scale::ScalingPolicy;

/// Traffic control for one runner: its calls come from the service's
/// instances, not from clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerTraffic {
    /// Seconds from a `compute` call to its result, queueing included; past
    /// it the guest gets a `wasi:nn` error and the request fails with 504.
    pub timeout: f64,
    /// Calls admitted at once per replica; `None`: unbounded.
    pub max_concurrency: Option<u32>,
    /// Where calls wait beyond `max_concurrency`.
    pub queue: crate::traffic::QueueConfig,
}

impl Default for RunnerTraffic {
    fn default() -> Self {
        RunnerTraffic { timeout: 60.0, max_concurrency: None, queue: crate::traffic::QueueConfig::default() }
    }
}

impl RunnerTraffic {
    /// Rejects values no runner could run with, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        check_timeout("traffic.timeout", self.timeout)?;
        if self.max_concurrency == Some(0) {
            return Err("traffic.max_concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// The timeout; validated values always fit.
    pub fn timeout_duration(&self) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(self.timeout).unwrap_or(std::time::Duration::from_secs(60))
    }
}

/// How one runner batches (BentoML's `max_batch_size` and
/// `max_latency_ms`); a key left out takes the host's `serve` default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerBatching {
    /// Items per forward pass at most; 1 turns batching off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// Latency objective per call, arrival to result: a call predicted to
    /// finish later fails at once with 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u64>,
}

/// The largest batch one runner may be configured for.
pub const MAX_BATCH_SIZE: usize = 4096;

impl RunnerBatching {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = self.max_batch_size
            && !(1..=MAX_BATCH_SIZE).contains(&n)
        {
            return Err(format!("batching.max_batch_size must be 1 to {MAX_BATCH_SIZE}, got {n}"));
        }
        if let Some(ms) = self.max_latency_ms
            && !(1..=(MAX_TIMEOUT_SECONDS as u64) * 1000).contains(&ms)
        {
            return Err(format!(
                "batching.max_latency_ms must be 1 to {}, got {ms}",
                MAX_TIMEOUT_SECONDS as u64 * 1000
            ));
        }
        Ok(())
    }

    /// These settings over the host's `defaults`.
    pub fn over(&self, defaults: &crate::runner::Batching) -> crate::runner::Batching {
        crate::runner::Batching {
            max_batch_size: self.max_batch_size.unwrap_or(defaults.max_batch_size),
            max_latency: match self.max_latency_ms {
                Some(ms) => Some(std::time::Duration::from_millis(ms)),
                None => defaults.max_latency,
            },
        }
    }
}

/// One runner's settings: `[runners.<model>]` in `bento.toml`, overridable
/// per deployment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    pub traffic: RunnerTraffic,
    pub scaling: Scaling,
    pub batching: RunnerBatching,
}

/// Runner replicas one host runs at most (each is a worker thread).
pub const MAX_RUNNER_REPLICAS: u32 = 64;

impl RunnerConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.traffic.validate()?;
        self.batching.validate()?;
        self.scaling.validate().map_err(|e| format!("scaling.{e}"))?;
        RunnerConfig::check_runner_replicas(&self.scaling).map_err(|e| format!("scaling.{e}"))
    }

    /// A runner's replicas are threads in this host: a few dozen at most.
    pub fn check_runner_replicas(scaling: &Scaling) -> Result<(), String> {
        if scaling.max_replicas > MAX_RUNNER_REPLICAS {
            return Err(format!(
                "max_replicas: a runner has at most {MAX_RUNNER_REPLICAS} replicas in one host, got {}",
                scaling.max_replicas
            ));
        }
        Ok(())
    }
}

fn check_timeout(key: &str, timeout: f64) -> Result<(), String> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= MAX_TIMEOUT_SECONDS) {
        return Err(format!(
            "{key} must be a positive number of seconds up to {MAX_TIMEOUT_SECONDS} (a day), got {timeout}"
        ));
    }
    Ok(())
}

impl Traffic {
    /// Rejects values no deployment could run with, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        check_timeout("traffic.timeout", self.timeout)?;
        if self.max_concurrency == Some(0) {
            return Err("traffic.max_concurrency must be at least 1".into());
        }
        if self.memory_limit_mib == 0 || self.memory_limit_mib > 4096 {
            return Err(format!(
                "traffic.memory_limit_mib must be between 1 and 4096, got {}",
                self.memory_limit_mib
            ));
        }
        Ok(())
    }
}

impl SourceManifest {
    /// Parses and checks a source `bento.toml`.
    pub fn parse(text: &str) -> anyhow::Result<SourceManifest> {
        let manifest: SourceManifest = toml::from_str(text)?;
        crate::tag::Tag::new(&manifest.name, &manifest.version)?;
        manifest.traffic.validate().map_err(anyhow::Error::msg)?;
        manifest.scaling.validate().map_err(|e| anyhow::anyhow!("scaling.{e}"))?;
        for (alias, tag) in &manifest.models {
            tag.parse::<crate::tag::Tag>().map_err(|e| anyhow::anyhow!("models.{alias}: {e}"))?;
        }
        manifest.resources.validate().map_err(anyhow::Error::msg)?;
        for (alias, runner) in &manifest.runners {
            if !manifest.models.contains_key(alias) {
                anyhow::bail!("runners.{alias}: no model of that name in [models]");
            }
            runner.validate().map_err(|e| anyhow::anyhow!("runners.{alias}.{e}"))?;
        }
        Ok(manifest)
    }
}

impl BentoManifest {
    /// Parses a stored `bento.toml`.
    pub fn parse(text: &str) -> anyhow::Result<BentoManifest> {
        Ok(toml::from_str(text)?)
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest serializes")
    }

    /// The bento's tag.
    pub fn tag(&self) -> crate::tag::Tag {
        crate::tag::Tag { name: self.name.clone(), version: self.version.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_manifest_defaults_and_checks() {
        let m = SourceManifest::parse("name = \"hello\"\nversion = \"0.1.0\"\n").unwrap();
        assert_eq!(m.traffic, Traffic::default());
        assert!(m.models.is_empty());

        let err = SourceManifest::parse("name = \"Hello\"\nversion = \"1\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid tag"), "{err}");

        let err =
            SourceManifest::parse("name = \"a\"\nversion = \"1\"\n[traffic]\ntimeout = 0\n").unwrap_err();
        assert!(err.to_string().contains("traffic.timeout"), "{err}");

        let err = SourceManifest::parse(
            "name = \"a\"\nversion = \"1\"\n[scaling]\nmin_replicas = 3\nmax_replicas = 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("scaling.min_replicas: 3 must not exceed"), "{err}");

        let err = SourceManifest::parse(
            "name = \"a\"\nversion = \"1\"\n[models]\nm = \"m:1\"\n[runners.m.traffic]\ntimeout = -1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("runners.m.traffic.timeout"), "{err}");
        let err = SourceManifest::parse("name = \"a\"\nversion = \"1\"\n[runners.x]\n").unwrap_err();
        assert!(err.to_string().contains("runners.x: no model"), "{err}");

        let err = SourceManifest::parse("name = \"a\"\nversion = \"1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bento_manifest_round_trips() {
        let m = BentoManifest {
            name: "hello".into(),
            version: "0.1.0".into(),
            description: String::new(),
            created: "2026-01-01T00:00:00Z".into(),
            component: ComponentInfo { digest: "sha256:00".into(), size: 3 },
            models: BTreeMap::from([("m".to_string(), "m:abc".to_string())]),
            traffic: Traffic::default(),
            scaling: Scaling::default(),
            runners: BTreeMap::new(),
            resources: Default::default(),
            apis: vec![ApiSpec {
                name: "greet".into(),
                doc: "Greets.".into(),
                input_schema: "{\"type\":\"object\"}".into(),
                output_schema: "{}".into(),
            }],
        };
        let back = BentoManifest::parse(&m.to_toml()).unwrap();
        assert_eq!(back.apis, m.apis);
        assert_eq!(back.models, m.models);
        assert_eq!(back.component, m.component);
    }
}
