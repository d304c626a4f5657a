//! The `wasmbento` command line: argument parsing and printing only; the
//! work is done by the library modules.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::deployment::DeploymentSpec;
use crate::hub::HubRef;
use crate::instance::{Runtime, RuntimeOptions};
use crate::server::{self, DEFAULT_MAX_REQUEST_BYTES, ServeOptions};
use crate::store::Store;
use crate::tag::Tag;

/// Serve inference services as WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wasmbento", version, about)]
pub struct Cli {
    /// The store of models and bentos.
    #[arg(long, env = "WASMBENTO_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage models in the store.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Build a plugin directory into a bento in the store.
    Build {
        /// A plugin directory: a cdylib crate with a bento.toml.
        dir: PathBuf,
    },
    /// List the bentos in the store.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a bento from the store (its models stay; see `models delete`).
    Delete {
        /// The bento, name[:version].
        bento: Tag,
    },
    /// Push a bento (with its models) or a model to an OCI registry.
    Push {
        /// A bento or model in the store, name[:version].
        artifact: Tag,
        /// Where to: host[:port]/repository[:tag] (the tag defaults to the version).
        reference: String,
        #[command(flatten)]
        output: Output,
    },
    /// Pull a bento (with its models) or a model from an OCI registry, or
    /// import one from an OCI image layout directory.
    Pull {
        /// host[:port]/repository[:tag|@digest], or oci:DIR:NAME
        reference: String,
        #[command(flatten)]
        output: Output,
    },
    /// Store credentials for a registry (used for it only).
    Login {
        /// The registry: host[:port].
        registry: String,
        #[arg(long, short)]
        username: String,
        /// Read the password from standard input (otherwise WASMBENTO_REGISTRY_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Serve bentos over HTTP, one deployment each.
    Serve(ServeArgs),
    /// What this host has: CPUs, memory and GPUs (or why none was found).
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare a model on a device with the CPU: embeddings (cosine) and
    /// throughput at batch 1 and 32. Fails when they disagree.
    CheckDevice {
        /// A model directory (Hugging Face layout).
        model_dir: PathBuf,
        /// cpu or cuda:N (default: the GPU with the most free memory).
        #[arg(long)]
        device: Option<crate::devices::Device>,
        /// Reference embeddings: {"cases": [{"text", "embedding"}]}.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Seconds to measure each backend at each batch size.
        #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
        seconds: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How transfers report.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// No progress bars or summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary instead of progress bars.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
}

impl Output {
    fn progress(&self) -> crate::oci::registry::Progress {
        if self.quiet || self.json {
            crate::oci::registry::Progress::hidden()
        } else {
            crate::oci::registry::Progress::bars()
        }
    }

    fn report(&self, verb: &str, t: &crate::oci::registry::Transfer) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(t)?);
        } else if !self.quiet && t.reference.starts_with("oci:") {
            println!("{verb} {} {} from {} ({})", t.kind, t.tag, t.reference, t.digest);
        } else if !self.quiet {
            let mib = t.bytes_transferred as f64 / (1024.0 * 1024.0);
            let preposition = if verb == "pushed" { "to" } else { "from" };
            println!(
                "{verb} {} {} {preposition} {} ({}): {} blobs, {mib:.1} MiB in {:.1}s ({:.1} MiB/s), {} already there",
                t.kind,
                t.tag,
                t.reference,
                t.digest,
                t.blobs_transferred,
                t.seconds,
                mib / t.seconds.max(1e-3),
                t.blobs_skipped
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Import a model from a directory or from a hub (hf://owner/name[@revision]).
    Import {
        /// A directory in Hugging Face format, or hf://owner/name[@revision].
        source: String,
        /// The tag to store it under (name or name:version).
        #[arg(long)]
        name: Tag,
        #[command(flatten)]
        output: Output,
    },
    /// List the models in the store.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Push a model to an OCI registry.
    Push {
        /// A model in the store, name[:version].
        model: Tag,
        /// Where to: host[:port]/repository[:tag].
        reference: String,
        #[command(flatten)]
        output: Output,
    },
    /// Pull a model from an OCI registry.
    Pull {
        /// host[:port]/repository[:tag|@digest]
        reference: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a model from the store (refused while a bento uses it).
    Delete {
        /// The model, name[:version].
        model: Tag,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Bentos to serve: `bento[:version]`, or `name=bento[:version]` to
    /// choose the deployment name (default: the bento's name). A registry
    /// reference (`host[:port]/repository[:tag]`) is pulled first. With
    /// none, deploy through the admin API.
    #[arg(value_name = "BENTO")]
    pub bentos: Vec<String>,
    /// The deployment name, when serving a single bento.
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Instances that may run at once (the pooling allocator's size).
    #[arg(long, default_value_t = 1000)]
    pub max_instances: u32,
    /// Items per forward pass at most when runners batch concurrent calls (1: no batching).
    #[arg(long, default_value_t = crate::runner::DEFAULT_MAX_BATCH_SIZE)]
    pub max_batch_size: usize,
    /// A runner's latency objective per call, in ms: calls that would finish
    /// later fail at once with 503 (BentoML's max_latency_ms).
    #[arg(long, default_value_t = 60_000)]
    pub max_latency_ms: u64,
    /// Allocate instances on demand instead of from a pool.
    #[arg(long)]
    pub no_pooling: bool,
    /// Bearer token for the admin API (/admin/v1); generated and printed when absent.
    #[arg(long, env = "WASMBENTO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token the APIs (POST /{deployment}/{api}, /docs.json) require;
    /// unset: they are open. Probes and /metrics stay open.
    #[arg(long, env = "WASMBENTO_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let store = match &cli.home {
        Some(home) => Store::open(home.clone())?,
        None => Store::from_env()?,
    };
    match cli.command {
        Command::Models(ModelsCommand::Import { source, name, output }) => {
            import_model(&store, &source, &name, output).await
        }
        Command::Models(ModelsCommand::List { json }) => list_models(&store, json),
        Command::Models(ModelsCommand::Push { model, reference, output }) => {
            push(&store, &model, &reference, output, Some(Kind::Model)).await
        }
        Command::Models(ModelsCommand::Pull { reference, output }) => {
            pull(&store, &reference, output, Some(Kind::Model)).await.map(drop)
        }
        Command::Models(ModelsCommand::Delete { model }) => {
            let deleted = store.delete_model(&model)?;
            println!("deleted model {}", deleted.tag());
            Ok(())
        }
        Command::Delete { bento } => {
            let deleted = store.delete_bento(&bento)?;
            println!("deleted bento {}", deleted.manifest.tag());
            Ok(())
        }
        Command::Push { artifact, reference, output } => {
            push(&store, &artifact, &reference, output, None).await
        }
        Command::Pull { reference, output } => pull(&store, &reference, output, None).await.map(drop),
        Command::Login { registry, username, password_stdin } => {
            login(&store, &registry, username, password_stdin).await
        }
        Command::Build { dir } => {
            let runtime = Runtime::new(&RuntimeOptions::default(), &store.compiled_cache_dir())?;
            let bento = crate::builder::build(&store, &runtime, &dir).await?;
            let m = &bento.manifest;
            let apis: Vec<&str> = m.apis.iter().map(|a| a.name.as_str()).collect();
            println!("built bento {} ({} bytes, APIs: {})", m.tag(), m.component.size, apis.join(", "));
            Ok(())
        }
        Command::List { json } => list_bentos(&store, json),
        Command::Serve(args) => serve(&store, args).await,
        Command::Info { json } => info(json),
        Command::CheckDevice { model_dir, device, reference, seconds, json } => {
            check_device(&model_dir, device, reference.as_deref(), seconds, json)
        }
    }
}

fn check_device(
    dir: &std::path::Path,
    device: Option<crate::devices::Device>,
    reference: Option<&std::path::Path>,
    seconds: f64,
    json: bool,
) -> Result<()> {
    use crate::devices::Device;
    // The arguments first, then the hardware.
    if !(seconds > 0.0 && seconds <= 3600.0) {
        anyhow::bail!("--seconds must be more than 0 and at most 3600, got {seconds}");
    }
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let reference = match reference {
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?)
        }
        None => None,
    };
    let device = match device {
        Some(device) => device,
        // The GPU with the most free memory, as placement would choose.
        None => match crate::runner::cuda::usable_gpus() {
            Ok(gpus) => match gpus.iter().max_by_key(|g| g.memory_free_bytes) {
                Some(gpu) => Device::Cuda(gpu.ordinal),
                None => anyhow::bail!(
                    "no GPU to check (this host has no GPU); --device cpu runs the check CPU against CPU"
                ),
            },
            Err(why) => anyhow::bail!("no GPU to check ({why}); --device cpu runs the check CPU against CPU"),
        },
    };
    let report = crate::device_check::run(
        dir,
        device,
        reference.as_ref(),
        std::time::Duration::from_secs_f64(seconds),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::device_check::render(&report));
    }
    if !report.passed {
        anyhow::bail!("{device} disagrees with the CPU");
    }
    Ok(())
}

fn info(json: bool) -> Result<()> {
    let info = crate::devices::discover();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("CPUs:   {}", info.cpus);
    println!(
        "memory: {:.1} GiB total, {:.1} GiB available",
        gib(info.memory_total_bytes),
        gib(info.memory_available_bytes)
    );
    for g in &info.gpus {
        println!(
            "GPU {}:  {} ({:.1} GiB, {:.1} GiB free, compute capability {}.{})",
            g.ordinal,
            g.name,
            gib(g.memory_total_bytes),
            gib(g.memory_free_bytes),
            g.compute_capability.0,
            g.compute_capability.1
        );
    }
    if let Some(why) = &info.no_gpu_reason {
        println!("GPUs:   none ({why})");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bento,
    Model,
}

async fn push(store: &Store, tag: &Tag, reference: &str, output: Output, kind: Option<Kind>) -> Result<()> {
    use crate::oci::registry::{Registry, parse_reference};
    let kind = match kind {
        Some(kind) => kind,
        None => match (store.bento(tag).is_ok(), store.model(tag).is_ok()) {
            (true, true) => {
                anyhow::bail!("{tag} is both a bento and a model; use `wasmbento models push` for the model")
            }
            (true, false) => Kind::Bento,
            (false, true) => Kind::Model,
            (false, false) => anyhow::bail!("no bento or model {tag} in the store"),
        },
    };
    let mut target = parse_reference(reference)?;
    // The parser fills in `latest`; only an explicit tag overrides the version.
    let last = reference.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        // No tag given: the artifact's version.
        let version = match kind {
            Kind::Bento => store.bento(tag)?.manifest.version,
            Kind::Model => store.model(tag)?.info.version,
        };
        target =
            oci_client::Reference::with_tag(target.registry().into(), target.repository().into(), version);
    }
    let registry = Registry::for_reference(store, &target, output.progress())?;
    let transfer = match kind {
        Kind::Bento => registry.push_bento(store, tag, &target).await?,
        Kind::Model => registry.push_model(store, tag, &target).await?,
    };
    output.report("pushed", &transfer)
}

/// Pulls an artifact; returns what it was stored as.
async fn pull(
    store: &Store,
    reference: &str,
    output: Output,
    kind: Option<Kind>,
) -> Result<crate::oci::registry::Transfer> {
    use crate::oci::registry::{Registry, parse_reference};
    let transfer = if let Some(layout) = reference.strip_prefix("oci:") {
        // Another OCI image layout, as skopeo names them: oci:DIR:NAME.
        let (dir, name) = layout.split_once(':').ok_or_else(|| {
            anyhow::anyhow!("expected oci:DIR:NAME (NAME: its org.opencontainers.image.ref.name)")
        })?;
        let started = std::time::Instant::now();
        let (store2, dir2, name2) = (store.clone(), PathBuf::from(dir), name.to_string());
        let (kind, tag, digest) =
            tokio::task::spawn_blocking(move || store2.import_layout(&dir2, &name2)).await??;
        crate::oci::registry::Transfer {
            reference: reference.to_string(),
            digest,
            kind: kind.into(),
            tag: tag.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            ..Default::default()
        }
    } else {
        let reference = parse_reference(reference)?;
        let registry = Registry::for_reference(store, &reference, output.progress())?;
        registry.pull(store, &reference).await?
    };
    if kind == Some(Kind::Model) && transfer.kind != "model" {
        anyhow::bail!(
            "{} is a {}, not a model (it was pulled; see `wasmbento list`)",
            transfer.reference,
            transfer.kind
        );
    }
    output.report("pulled", &transfer)?;
    Ok(transfer)
}

async fn login(store: &Store, registry: &str, username: String, password_stdin: bool) -> Result<()> {
    use crate::oci::credentials::{Credentials, save};
    use crate::oci::registry::{Progress, Registry};
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        std::env::var("WASMBENTO_REGISTRY_PASSWORD").context(
            "give the password on standard input (--password-stdin) or in WASMBENTO_REGISTRY_PASSWORD",
        )?
    };
    let host_port = registry.split(':').next().is_some_and(|h| !h.is_empty());
    if registry.contains("://") || registry.contains('/') || !host_port {
        anyhow::bail!(
            "{registry:?}: name the registry as host[:port], e.g. registry.example.com or localhost:5000"
        );
    }
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    let auth = oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone());
    Registry::with_auth(registry, auth, Progress::hidden()).check_login().await?;
    save(store.root(), registry, &Credentials { username, password })?;
    println!("logged in to {registry}; credentials saved in {}", store.root().join("auth.json").display());
    Ok(())
}

async fn import_model(store: &Store, source: &str, tag: &Tag, output: Output) -> Result<()> {
    let started = std::time::Instant::now();
    let model = match HubRef::parse(source) {
        Some(hub_ref) => {
            let bar = output.progress().bytes(&format!("downloading {tag}"), 0);
            crate::hub::import_showing(store, &hub_ref?, source, tag, bar).await?
        }
        None => {
            let dir =
                std::fs::canonicalize(source).with_context(|| format!("{source}: no such directory"))?;
            let bar = output.progress().bytes(&format!("importing {tag}"), tree_size(&dir));
            let (store, tag) = (store.clone(), tag.clone());
            let label = dir.display().to_string();
            tokio::task::spawn_blocking(move || {
                store.import_model_dir_with(&dir, &tag, &label, &|n| bar.inc(n))
            })
            .await??
        }
    };
    let transfer = crate::oci::registry::Transfer {
        reference: source.to_string(),
        digest: model.digest.clone(),
        kind: "model".into(),
        tag: model.tag().to_string(),
        blobs_transferred: model.info.files.len(),
        blobs_skipped: 0,
        bytes_transferred: model.info.files.iter().map(|f| f.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
    };
    output.report("imported", &transfer)
}

/// Bytes of the regular files below `dir`.
fn tree_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn list_models(store: &Store, json: bool) -> Result<()> {
    let models = store.models()?;
    if json {
        let infos: Vec<_> = models.iter().map(|m| &m.info).collect();
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(());
    }
    println!("{:<40} {:>12}  {:<24}  SOURCE", "TAG", "SIZE", "CREATED");
    for m in models {
        let size: u64 = m.info.files.iter().map(|f| f.size).sum();
        println!("{:<40} {:>12}  {:<24}  {}", m.tag().to_string(), size, m.info.created, m.info.source);
    }
    Ok(())
}

fn list_bentos(store: &Store, json: bool) -> Result<()> {
    let bentos = store.bentos()?;
    if json {
        let manifests: Vec<_> = bentos.iter().map(|b| &b.manifest).collect();
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    println!("{:<32} {:>10}  {:<24}  {:<24}  MODELS", "TAG", "SIZE", "CREATED", "APIS");
    for b in bentos {
        let m = &b.manifest;
        let apis: Vec<&str> = m.apis.iter().map(|a| a.name.as_str()).collect();
        let models: Vec<&str> = m.models.values().map(String::as_str).collect();
        println!(
            "{:<32} {:>10}  {:<24}  {:<24}  {}",
            m.tag().to_string(),
            m.component.size,
            m.created,
            apis.join(","),
            models.join(",")
        );
    }
    Ok(())
}

async fn serve(store: &Store, args: ServeArgs) -> Result<()> {
    let mut deployments = Vec::new();
    for arg in &args.bentos {
        let (name, bento) = match arg.split_once('=') {
            Some((name, bento)) => (Some(name), bento),
            None => (None, arg.as_str()),
        };
        if !crate::oci::registry::is_reference(bento) {
            deployments.push(arg.parse::<DeploymentSpec>()?);
            continue;
        }
        let tag =
            crate::oci::registry::pull_bento(store, bento, crate::oci::registry::Progress::bars()).await?;
        let spec = match name {
            Some(name) => format!("{name}={tag}"),
            None => tag.to_string(),
        };
        deployments.push(spec.parse::<DeploymentSpec>()?);
    }
    if let Some(name) = args.name {
        anyhow::ensure!(
            deployments.len() == 1,
            "--name applies to a single bento; use name=bento for several"
        );
        crate::tag::check_part(&name, "deployment name", &name)?;
        deployments[0].name = Some(name);
    }
    let options = ServeOptions {
        deployments,
        addr: SocketAddr::new(args.host, args.port),
        max_request_bytes: args.max_request_bytes,
        runtime: RuntimeOptions { pooling: !args.no_pooling, max_instances: args.max_instances },
        max_batch_size: args.max_batch_size,
        max_latency: Some(std::time::Duration::from_millis(args.max_latency_ms)),
        autoscale_interval: std::time::Duration::from_secs(1),
        admin_token: args.admin_token,
        api_token: args.api_token.filter(|t| !t.is_empty()),
    };
    let server = server::start(store, options).await?;
    let addr = server.addr;
    for d in server.state.deployments.all() {
        for api in &d.bento().apis {
            tracing::info!("POST http://{addr}/{}/{}", d.name(), api.name);
        }
    }
    tracing::info!("listening on http://{addr} (docs: /docs.json, metrics: /metrics)");
    let deployments = server.state.deployments.all();
    tokio::spawn(async move {
        for d in deployments {
            if let Err(e) = d.wait_ready().await {
                tracing::error!("{e:#}");
                return;
            }
        }
        tracing::info!("all deployments ready");
    });
    shutdown_signal().await?;
    tracing::info!("shutting down: finishing requests in flight");
    server.shutdown().await
}

/// Ctrl-C, or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
