//! Push bentos and models to an OCI registry and pull them back.
//!
//! The manifests pushed are the bytes stored in the local layout, so an
//! artifact has the same digest here and there. A bento's models go to a
//! sibling repository, `<bento repository's parent>/models/<model name>`
//! (`localhost:5000/team/embedder` → `localhost:5000/team/models/all-minilm-l6-v2`),
//! so bentos of one namespace share their models' blobs: a blob the
//! registry has already is not sent again. Pulling a bento pulls its models
//! by digest from there.
//!
//! Uploads go in chunks of at most 4 MiB (some registries cap a request
//! there); downloads stream to a staging file, never a whole layer in
//! memory, and every blob is checked against its digest (and size) before it
//! enters the store. Blobs the store has already are skipped. A tag is added
//! only once everything it names is in place, so an interrupted pull leaves
//! the store as it was.
//!
//! Registries on loopback are spoken to over plain HTTP, like Docker does;
//! others over HTTPS unless listed in `WASMBENTO_INSECURE_REGISTRIES`
//! (comma-separated `host[:port]`).

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, anyhow, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;

use super::layout::{BlobWriter, digest_of};
use super::media;
use crate::store::Store;
use crate::tag::Tag;

/// Chunk size of uploads and of reads from the store.
const CHUNK: usize = 4 << 20;

/// Parses a registry reference (`host[:port]/repository[:tag][@digest]`).
pub fn parse_reference(text: &str) -> Result<Reference> {
    if !text.contains('/') {
        bail!(
            "{text:?} is not a registry reference: expected host[:port]/repository[:tag], e.g. localhost:5000/team/embedder:0.1.0"
        );
    }
    text.parse().with_context(|| format!("{text:?} is not a valid registry reference"))
}

/// Whether `text` names a registry artifact rather than a stored tag (tags
/// never contain `/`).
pub fn is_reference(text: &str) -> bool {
    text.contains('/')
}

/// Pulls the bento a registry reference names (with its models) and
/// returns its tag in the store (`serve` and the admin API's deploy).
pub async fn pull_bento(store: &Store, reference: &str, progress: Progress) -> Result<Tag> {
    let reference = parse_reference(reference)?;
    let registry = Registry::for_reference(store, &reference, progress)?;
    let pulled = registry.pull_kind(store, &reference, Some("bento")).await?;
    Ok(pulled.tag.parse()?)
}

/// Where a bento's model goes: a `models/` repository beside the bento's.
pub fn model_reference(bento: &Reference, model: &Tag) -> Reference {
    let repository = match bento.repository().rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/models/{}", model.name),
        None => format!("models/{}", model.name),
    };
    Reference::with_tag(bento.registry().to_string(), repository, model.version.clone())
}

/// What a push or pull did, for `--json` and the summary line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Transfer {
    /// The reference of the artifact named on the command line.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// `bento` or `model`.
    pub kind: String,
    /// The local tag (`name:version`).
    pub tag: String,
    /// Blobs sent or received.
    pub blobs_transferred: usize,
    /// Blobs the other side had already.
    pub blobs_skipped: usize,
    /// Bytes sent or received.
    pub bytes_transferred: u64,
    /// Seconds the whole transfer took.
    pub seconds: f64,
}

/// Progress bars on stderr, or nothing (`--quiet`, `--json`).
#[derive(Clone)]
pub struct Progress {
    bars: Option<indicatif::MultiProgress>,
}

impl Progress {
    pub fn bars() -> Progress {
        Progress { bars: Some(indicatif::MultiProgress::new()) }
    }

    pub fn hidden() -> Progress {
        Progress { bars: None }
    }

    /// A bar for `size` bytes of work (hidden when there are no bars).
    pub fn bytes(&self, what: &str, size: u64) -> indicatif::ProgressBar {
        self.blob(what, size)
    }

    fn blob(&self, what: &str, size: u64) -> indicatif::ProgressBar {
        let Some(bars) = &self.bars else { return indicatif::ProgressBar::hidden() };
        let style = indicatif::ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bars.add(indicatif::ProgressBar::new(size).with_style(style).with_message(what.to_string()))
    }
}

/// A client for one registry, with the credentials filed for it.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    registry: String,
    progress: Progress,
}

impl Registry {
    /// A client for the registry of `reference`: credentials from
    /// `wasmbento login` or docker's config, for that registry only.
    pub fn for_reference(store: &Store, reference: &Reference, progress: Progress) -> Result<Registry> {
        let registry = reference.resolve_registry().to_string();
        let auth = match super::credentials::find(store.root(), reference.registry())? {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry::with_auth(&registry, auth, progress))
    }

    /// A client for `registry` with the given credentials.
    pub fn with_auth(registry: &str, auth: RegistryAuth, progress: Progress) -> Registry {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries(registry)),
            ..ClientConfig::default()
        };
        Registry { client: Client::new(config), auth, registry: registry.to_string(), progress }
    }

    /// Checks the credentials against the registry (`wasmbento login`).
    pub async fn check_login(&self) -> Result<()> {
        let probe = Reference::with_tag(self.registry.clone(), "wasmbento/login-check".into(), "x".into());
        self.client
            .auth(&probe, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| explain(e, &self.registry))?;
        match self.client.catalog(&probe, &self.auth, Some(1), None).await {
            Ok(_) => Ok(()),
            Err(
                e @ (OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)),
            ) => Err(explain(e, &self.registry)),
            // Registries that do not list their catalog still took the credentials.
            Err(_) => Ok(()),
        }
    }

    /// Pushes a stored bento, and the models it uses, to `target`.
    pub async fn push_bento(&self, store: &Store, tag: &Tag, target: &Reference) -> Result<Transfer> {
        let started = std::time::Instant::now();
        let bento = store.bento(tag)?;
        let mut total = Transfer::default();
        for (model_tag, model_digest) in bento.models()?.into_values() {
            let model_ref = model_reference(target, &model_tag);
            let sent = self.push_artifact(store, &model_digest, &model_ref).await?;
            total.blobs_transferred += sent.blobs_transferred;
            total.blobs_skipped += sent.blobs_skipped;
            total.bytes_transferred += sent.bytes_transferred;
        }
        let sent = self.push_artifact(store, &bento.digest, target).await?;
        Ok(Transfer {
            reference: target.whole(),
            digest: bento.digest,
            kind: "bento".into(),
            tag: bento.manifest.tag().to_string(),
            blobs_transferred: total.blobs_transferred + sent.blobs_transferred,
            blobs_skipped: total.blobs_skipped + sent.blobs_skipped,
            bytes_transferred: total.bytes_transferred + sent.bytes_transferred,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Pushes a stored model to `target`.
    pub async fn push_model(&self, store: &Store, tag: &Tag, target: &Reference) -> Result<Transfer> {
        let started = std::time::Instant::now();
        let model = store.model(tag)?;
        let sent = self.push_artifact(store, &model.digest, target).await?;
        Ok(Transfer {
            reference: target.whole(),
            digest: model.digest.clone(),
            kind: "model".into(),
            tag: model.tag().to_string(),
            seconds: started.elapsed().as_secs_f64(),
            ..sent
        })
    }

    /// Pushes the blobs the registry lacks, then the manifest.
    async fn push_artifact(&self, store: &Store, digest: &str, target: &Reference) -> Result<Transfer> {
        let context = || format!("pushing to {}", target.whole());
        // Tokens are kept per operation, and the existence checks are pulls.
        for operation in [RegistryOperation::Pull, RegistryOperation::Push] {
            self.client
                .auth(target, &self.auth, operation)
                .await
                .map_err(|e| explain(e, &self.registry))
                .with_context(context)?;
        }
        let bytes = store.layout().read_blob(digest)?;
        let manifest: OciImageManifest = serde_json::from_slice(&bytes)?;
        let mut transfer = Transfer::default();
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let exists = self
                .client
                .blob_exists(target, &blob.digest)
                .await
                .map_err(|e| explain(e, &self.registry))
                .with_context(context)?;
            if exists {
                transfer.blobs_skipped += 1;
                continue;
            }
            let path = store.layout().blob_path(&blob.digest)?;
            let bar = self.progress.blob(&blob_label(blob), blob.size as u64);
            let stream = file_chunks(&path, bar.clone()).await?;
            self.client
                .push_blob_stream(target, stream, &blob.digest)
                .await
                .map_err(|e| explain(e, &self.registry))
                .with_context(context)?;
            bar.finish();
            transfer.blobs_transferred += 1;
            transfer.bytes_transferred += blob.size as u64;
        }
        let content_type = http::HeaderValue::from_static(media::MANIFEST);
        self.client
            .push_manifest_raw(target, bytes, content_type)
            .await
            .map_err(|e| explain(e, &self.registry))
            .with_context(context)?;
        Ok(transfer)
    }

    /// Pulls a bento (with its models) or a model into the store. Every
    /// blob is fetched and checked before anything is tagged: a failure
    /// leaves the store's bentos and models as they were.
    pub async fn pull(&self, store: &Store, reference: &Reference) -> Result<Transfer> {
        self.pull_kind(store, reference, None).await
    }

    /// [`Registry::pull`], refusing before any layer is fetched when the
    /// artifact is not a `kind` (`"bento"` or `"model"`).
    pub async fn pull_kind(
        &self,
        store: &Store,
        reference: &Reference,
        kind: Option<&str>,
    ) -> Result<Transfer> {
        let started = std::time::Instant::now();
        // Blobs fetched for tags not yet written are not garbage.
        let _writing = store.layout().writing()?;
        let (digest, manifest, mut transfer) = self.pull_artifact(store, reference, None, kind).await?;
        for (model_tag, model_digest) in crate::store::model_refs(&manifest)?.into_values() {
            let model_ref = model_reference(reference, &model_tag).clone_with_digest(model_digest.clone());
            let (_, _, got) =
                self.pull_artifact(store, &model_ref, Some(&model_digest), Some("model")).await?;
            transfer.blobs_transferred += got.blobs_transferred;
            transfer.blobs_skipped += got.blobs_skipped;
            transfer.bytes_transferred += got.bytes_transferred;
        }
        let (kind, tag) =
            store.tag_fetched(&digest).with_context(|| format!("pulling {}", reference.whole()))?;
        Ok(Transfer {
            reference: reference.whole(),
            digest,
            kind: kind.into(),
            tag: tag.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            ..transfer
        })
    }

    /// Fetches a manifest and the blobs the store lacks; tags nothing.
    async fn pull_artifact(
        &self,
        store: &Store,
        reference: &Reference,
        expected: Option<&str>,
        expected_kind: Option<&str>,
    ) -> Result<(String, OciImageManifest, Transfer)> {
        let context = || format!("pulling {}", reference.whole());
        self.client
            .auth(reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| explain(e, &self.registry))
            .with_context(context)?;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &[media::MANIFEST])
            .await
            .map_err(|e| explain(e, &self.registry))
            .with_context(context)?;
        let actual = digest_of(&bytes);
        for claimed in [Some(digest.as_str()), expected, reference.digest()].into_iter().flatten() {
            if claimed != actual {
                bail!(
                    "{}: the manifest's content hashes to {actual}, not {claimed}; refusing it",
                    reference.whole()
                );
            }
        }
        let manifest: OciImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: parsing the manifest", reference.whole()))?;
        // Known kinds only, before any layer is fetched.
        let kind = crate::store::kind_of(&manifest).map_err(|e| anyhow!("{}: {e}", reference.whole()))?;
        if let Some(wanted) = expected_kind
            && kind != wanted
        {
            bail!("{} is a {kind}, not a {wanted}", reference.whole());
        }
        let _writing = store.layout().writing()?;
        // The manifest itself, checked above, for tagging once all is here.
        store.layout().put_bytes(&bytes)?;
        let mut transfer = Transfer::default();
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            // A blob already here is used only if it is still intact.
            if store.layout().has_blob(&blob.digest) && store.layout().verify_blob(&blob.digest)? {
                transfer.blobs_skipped += 1;
                continue;
            }
            let size =
                u64::try_from(blob.size).map_err(|_| anyhow!("blob {} has a negative size", blob.digest))?;
            let bar = self.progress.blob(&blob_label(blob), size);
            let mut sink = HashingSink { writer: store.layout().writer()?, limit: size, bar: bar.clone() };
            self.client
                .pull_blob(reference, blob, &mut sink)
                .await
                .map_err(|e| explain(e, &self.registry))
                .with_context(context)?;
            if sink.writer.size() != size {
                bail!(
                    "{}: blob {} is {} bytes, the manifest says {size}",
                    reference.whole(),
                    blob.digest,
                    sink.writer.size()
                );
            }
            sink.writer.commit(Some(&blob.digest)).with_context(context)?;
            bar.finish();
            transfer.blobs_transferred += 1;
            transfer.bytes_transferred += size;
        }
        Ok((actual, manifest, transfer))
    }
}

/// Loopback registries, and those in `WASMBENTO_INSECURE_REGISTRIES`, use HTTP.
fn insecure_registries(registry: &str) -> Vec<String> {
    let mut out: Vec<String> = std::env::var("WASMBENTO_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let host = registry
        .rsplit_once(':')
        .map_or(registry, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry });
    let loopback = host == "localhost"
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        out.push(registry.to_string());
    }
    out
}

/// A clearer message for the errors users meet.
fn explain(e: OciDistributionError, registry: &str) -> anyhow::Error {
    match e {
        OciDistributionError::UnauthorizedError { url } => unauthorized(registry, &url),
        OciDistributionError::RequestError(e) if e.status().is_some_and(|s| s.as_u16() == 401) => {
            unauthorized(registry, e.url().map(|u| u.as_str()).unwrap_or_default())
        }
        OciDistributionError::AuthenticationFailure(reason) => {
            anyhow!("registry {registry} refused the credentials: {reason}")
        }
        OciDistributionError::ImageManifestNotFoundError(what) => anyhow!("not found in {registry}: {what}"),
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
            let unknown = codes.iter().any(|c| c.contains("Unknown"));
            if unknown {
                anyhow!(
                    "{registry} has no such repository or tag ({url}); pushed bentos and models are tagged with their version (e.g. :0.1.0), not latest"
                )
            } else {
                anyhow!(
                    "registry {registry} refused the request ({url}): {}",
                    envelope.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ")
                )
            }
        }
        OciDistributionError::ManifestParsingError(m) if m.contains("index") => {
            anyhow!("this is an image index (a multi-platform image), not a wasmbento bento or model: {m}")
        }
        OciDistributionError::RequestError(e) if format!("{e:?}").contains("InvalidContentType") => anyhow!(
            "{e}: is {registry} plain HTTP? Registries on loopback use HTTP; list others as host:port in WASMBENTO_INSECURE_REGISTRIES"
        ),
        OciDistributionError::DigestError(d) => anyhow!("content from {registry} failed verification: {d}"),
        other => anyhow::Error::new(other),
    }
}

fn unauthorized(registry: &str, url: &str) -> anyhow::Error {
    anyhow!(
        "registry {registry} refused the request ({url}): not logged in, or the username or password is wrong (wasmbento login {registry})"
    )
}

/// A short name for a blob in progress bars.
fn blob_label(blob: &OciDescriptor) -> String {
    let title = blob.annotations.as_ref().and_then(|a| a.get(media::TITLE));
    match title {
        Some(t) => t.clone(),
        None => blob.digest.chars().take(19).collect(),
    }
}

/// A file as a stream of chunks of at most [`CHUNK`] bytes.
async fn file_chunks(
    path: &Path,
    bar: indicatif::ProgressBar,
) -> Result<impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    Ok(futures_util::stream::unfold((file, bar), |(mut file, bar)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(OciDistributionError::IoError(e)), (file, bar))),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        bar.inc(filled as u64);
        Some((Ok(bytes::Bytes::from(buf)), (file, bar)))
    }))
}

/// Where a pulled blob's bytes go: the store's staging writer (which hashes
/// them), refusing more bytes than the manifest promised.
struct HashingSink {
    writer: BlobWriter,
    limit: u64,
    bar: indicatif::ProgressBar,
}

impl tokio::io::AsyncWrite for HashingSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.writer.size() + buf.len() as u64 > self.limit {
            let e =
                std::io::Error::other(format!("the blob is larger than its declared {} bytes", self.limit));
            return Poll::Ready(Err(e));
        }
        // A buffered write to a local file: short enough to do in place.
        let n = self.writer.write(buf);
        if let Ok(n) = n {
            self.bar.inc(n as u64);
        }
        Poll::Ready(n)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.writer.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_go_beside_the_bento() {
        let bento = parse_reference("localhost:5000/team/embedder:0.1.0").unwrap();
        let model = model_reference(&bento, &"all-minilm-l6-v2:abc".parse().unwrap());
        assert_eq!(model.whole(), "localhost:5000/team/models/all-minilm-l6-v2:abc");
        let top = parse_reference("localhost:5000/embedder:0.1.0").unwrap();
        let model = model_reference(&top, &"m:1".parse().unwrap());
        assert_eq!(model.whole(), "localhost:5000/models/m:1");
        assert!(
            parse_reference("embedder:0.1.0").unwrap_err().to_string().contains("not a registry reference")
        );
    }

    #[test]
    fn loopback_registries_use_http() {
        assert_eq!(insecure_registries("localhost:5000"), ["localhost:5000"]);
        assert_eq!(insecure_registries("127.0.0.1:41234"), ["127.0.0.1:41234"]);
        assert_eq!(insecure_registries("[::1]:5000"), ["[::1]:5000"]);
        assert!(insecure_registries("ghcr.io").is_empty());
        assert!(insecure_registries("localhost.example.com:5000").is_empty());
    }
}
