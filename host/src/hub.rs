//! Importing models from a Hugging Face-style hub (`hf://owner/name[@revision]`).
//!
//! Uses `hf-hub`, which honours `HF_ENDPOINT` (a mirror or a private hub) and
//! `HF_TOKEN`. Only the files a runner reads are downloaded: configuration,
//! tokenizer and safetensors weights, not the ONNX, TensorFlow or PyTorch
//! copies many repositories also carry.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::store::{Store, StoredModel};
use crate::tag::Tag;

/// Files worth importing.
const WANTED: &[&str] = &["*.json", "*/config.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model"];

/// A parsed `hf://owner/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub owner: String,
    pub name: String,
    pub revision: Option<String>,
}

impl HubRef {
    /// Parses `hf://owner/name[@revision]`; `None` when `s` is not an `hf://` reference.
    pub fn parse(s: &str) -> Option<Result<HubRef>> {
        let rest = s.strip_prefix("hf://")?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev.to_string())),
            None => (rest, None),
        };
        Some(match repo.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                if revision.as_deref() == Some("") {
                    Err(anyhow::anyhow!("{s}: empty revision after '@'"))
                } else {
                    Ok(HubRef { owner: owner.into(), name: name.into(), revision })
                }
            }
            _ => Err(anyhow::anyhow!("{s}: expected hf://owner/name[@revision]")),
        })
    }
}

/// Downloads a model from the hub and imports it into the store as `tag`.
/// The download goes to a scratch directory inside the store, so an
/// interrupted import leaves nothing behind.
pub async fn import(store: &Store, hub_ref: &HubRef, source: &str, tag: &Tag) -> Result<StoredModel> {
    import_showing(store, hub_ref, source, tag, indicatif::ProgressBar::hidden()).await
}

/// [`import`], showing the download on `bar` (bytes, rate).
pub async fn import_showing(
    store: &Store,
    hub_ref: &HubRef,
    source: &str,
    tag: &Tag,
    bar: indicatif::ProgressBar,
) -> Result<StoredModel> {
    let scratch = store.scratch_dir()?;
    download(hub_ref, scratch.path(), bar).await?;
    let (store, tag, source, dir) =
        (store.clone(), tag.clone(), source.to_string(), scratch.path().to_path_buf());
    tokio::task::spawn_blocking(move || store.import_model_dir(&dir, &tag, &source)).await?
}

/// Drives a progress bar from the hub client's download events.
struct Bar {
    bar: indicatif::ProgressBar,
    /// Bytes done per file: the events carry per-file totals, not deltas.
    files: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl hf_hub::progress::ProgressHandler for Bar {
    fn on_progress(&self, event: &hf_hub::progress::ProgressEvent) {
        use hf_hub::progress::{DownloadEvent, ProgressEvent};
        let ProgressEvent::Download(event) = event else { return };
        match event {
            DownloadEvent::Start { total_bytes, .. } => self.bar.set_length(*total_bytes),
            DownloadEvent::Progress { files } => {
                let mut done = self.files.lock().unwrap();
                for f in files {
                    done.insert(f.filename.clone(), f.bytes_completed);
                }
                self.bar.set_position(done.values().sum());
            }
            DownloadEvent::AggregateProgress { bytes_completed, .. } => {
                self.bar.set_position(*bytes_completed)
            }
            DownloadEvent::Complete => self.bar.finish(),
        }
    }
}

/// Downloads the model's files into `dest`.
pub async fn download(hub_ref: &HubRef, dest: &Path, bar: indicatif::ProgressBar) -> Result<()> {
    let client = hf_hub::HFClient::new().context("configuring the hub client")?;
    let repo = client.model(hub_ref.owner.clone(), hub_ref.name.clone());
    let endpoint = client.endpoint().to_string();
    let request = repo
        .snapshot_download()
        .maybe_revision(hub_ref.revision.clone())
        .allow_patterns(WANTED.iter().map(|s| s.to_string()).collect())
        .local_dir(dest.to_path_buf())
        .progress(hf_hub::progress::Progress::new(Bar { bar, files: Default::default() }));
    request
        .send()
        .await
        .with_context(|| format!("downloading {}/{} from {endpoint}", hub_ref.owner, hub_ref.name))?;
    if !dest.join("config.json").is_file() {
        bail!("{}/{} has no config.json", hub_ref.owner, hub_ref.name);
    }
    // hf-hub keeps bookkeeping under .cache in the target directory.
    let _ = std::fs::remove_dir_all(dest.join(".cache"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_references() {
        let r = HubRef::parse("hf://sentence-transformers/all-MiniLM-L6-v2@main").unwrap().unwrap();
        assert_eq!(r.owner, "sentence-transformers");
        assert_eq!(r.name, "all-MiniLM-L6-v2");
        assert_eq!(r.revision.as_deref(), Some("main"));
        assert_eq!(HubRef::parse("hf://a/b").unwrap().unwrap().revision, None);
        assert!(HubRef::parse("./models/x").is_none());
        for bad in ["hf://a", "hf://a/b/c", "hf:///b", "hf://a/b@"] {
            assert!(HubRef::parse(bad).unwrap().is_err(), "{bad}");
        }
    }
}
