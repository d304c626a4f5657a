//! An OCI image layout on disk (image-spec `image-layout.md`):
//!
//! ```text
//! oci-layout            {"imageLayoutVersion": "1.0.0"}
//! index.json            the tagged manifests (org.opencontainers.image.ref.name)
//! blobs/sha256/<hex>    content, named by its digest
//! ```
//!
//! Blobs are written to a staging file beside the layout, checked against
//! their digest and renamed into `blobs/` whole: a reader never sees a
//! partial blob, and a writer interrupted at any point leaves the layout as
//! it was (at most a staging file, swept when the layout is next opened
//! with no writer at work, or by garbage collection).
//! `index.json` is replaced atomically under an exclusive lock, so
//! concurrent writers (two pulls, a build during a pull) do not lose each
//! other's tags. Garbage collection takes the layout's lock exclusively,
//! writers take it shared, so a blob written for a manifest not yet tagged is
//! never collected.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use sha2::{Digest, Sha256};

use super::media;

/// An OCI image layout rooted at one directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    staging: PathBuf,
}

/// A descriptor's essentials: what a blob is, by digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

impl Blob {
    /// An OCI descriptor of this blob.
    pub fn descriptor(&self, media_type: &str) -> OciDescriptor {
        OciDescriptor {
            media_type: media_type.to_string(),
            digest: self.digest.clone(),
            size: self.size as i64,
            ..OciDescriptor::default()
        }
    }
}

impl Layout {
    /// The layout at `root` (created if missing); blobs are staged in
    /// `staging`, which must be on the same file system.
    pub fn open(root: impl Into<PathBuf>, staging: impl Into<PathBuf>) -> Result<Layout> {
        let (root, staging) = (root.into(), staging.into());
        fs::create_dir_all(root.join("blobs/sha256"))
            .with_context(|| format!("creating an OCI layout at {}", root.display()))?;
        fs::create_dir_all(&staging)?;
        let layout = Layout { root, staging };
        if !layout.root.join("oci-layout").is_file() {
            layout.write_atomic("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !layout.root.join("index.json").is_file() {
            let empty = OciImageIndex {
                schema_version: 2,
                media_type: Some(media::INDEX.into()),
                manifests: Vec::new(),
                artifact_type: None,
                annotations: None,
            };
            layout.write_atomic("index.json", &serde_json::to_vec_pretty(&empty)?)?;
        }
        // Staging files a killed writer left behind, if no writer is at work.
        if let Some(_alone) = FileLock::try_exclusive(&layout.staging.join("gc.lock"))? {
            layout.sweep_staging()?;
        }
        Ok(layout)
    }

    /// Removes staging files; only while holding the gc lock exclusively.
    fn sweep_staging(&self) -> Result<()> {
        for entry in fs::read_dir(&self.staging)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("blob-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(super::sha256_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Whether a stored blob still hashes to its digest; a corrupt one is
    /// removed (so it can be fetched again).
    pub fn verify_blob(&self, digest: &str) -> Result<bool> {
        let path = self.blob_path(digest)?;
        let mut file = fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher)?;
        if format!("sha256:{}", hex::encode(hasher.finalize())) == digest {
            return Ok(true);
        }
        tracing::warn!(blob = digest, "a stored blob was corrupt; removed it");
        fs::remove_file(&path)?;
        Ok(false)
    }

    /// A small blob's bytes (manifests, configs), checked against its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).with_context(|| format!("reading blob {digest}"))?;
        let actual = digest_of(&bytes);
        if actual != digest {
            bail!("blob {digest} in the store is corrupt (its content hashes to {actual})");
        }
        Ok(bytes)
    }

    /// Stores bytes as a blob.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Blob> {
        let mut writer = self.writer()?;
        writer.write_all(bytes)?;
        writer.commit(None)
    }

    /// Stores a file's content as a blob (copied, hashed on the way).
    pub fn put_file(&self, path: &Path) -> Result<Blob> {
        let input = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        self.put_reader(input).with_context(|| format!("copying {}", path.display()))
    }

    /// Stores everything `input` yields as a blob.
    pub fn put_reader(&self, mut input: impl io::Read) -> Result<Blob> {
        let mut writer = self.writer()?;
        io::copy(&mut input, &mut writer)?;
        writer.commit(None)
    }

    /// A staging file for one blob; [`BlobWriter::commit`] moves it in.
    pub fn writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new().prefix("blob-").tempfile_in(&self.staging)?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
            root: self.clone(),
        })
    }

    /// The layout's index.
    pub fn index(&self) -> Result<OciImageIndex> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    /// The manifest tagged `ref_name`, if any.
    pub fn resolve(&self, ref_name: &str) -> Result<Option<ImageIndexEntry>> {
        Ok(self.index()?.manifests.into_iter().find(|m| ref_name_of(m) == Some(ref_name)))
    }

    /// Tagged manifests whose ref name starts with `prefix`, by ref name.
    pub fn tagged(&self, prefix: &str) -> Result<BTreeMap<String, ImageIndexEntry>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter_map(|m| Some((ref_name_of(&m)?.to_string(), m)))
            .filter(|(name, _)| name.starts_with(prefix))
            .collect())
    }

    /// Reads and checks an image manifest.
    pub fn read_manifest(&self, digest: &str) -> Result<OciImageManifest> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing manifest {digest}"))
    }

    /// Stores a manifest and tags it `ref_name` (replacing what had the tag).
    /// `annotations` go on the index entry.
    pub fn put_manifest(
        &self,
        ref_name: &str,
        manifest_bytes: &[u8],
        mut annotations: BTreeMap<String, String>,
    ) -> Result<Blob> {
        let blob = self.put_bytes(manifest_bytes)?;
        annotations.insert(media::REF_NAME.into(), ref_name.into());
        let entry = ImageIndexEntry {
            media_type: media::MANIFEST.into(),
            digest: blob.digest.clone(),
            size: blob.size as i64,
            platform: None,
            annotations: Some(annotations),
            artifact_type: None,
        };
        self.update_index(|entries| {
            entries.retain(|m| ref_name_of(m) != Some(ref_name));
            entries.push(entry);
            Ok(())
        })?;
        Ok(blob)
    }

    /// Removes a tag; returns the entry it named.
    pub fn untag(&self, ref_name: &str) -> Result<Option<ImageIndexEntry>> {
        self.update_index(|entries| {
            let found = entries.iter().position(|m| ref_name_of(m) == Some(ref_name));
            Ok(found.map(|i| entries.remove(i)))
        })
    }

    /// Changes the index under the index lock and replaces it atomically.
    fn update_index<T>(&self, change: impl FnOnce(&mut Vec<ImageIndexEntry>) -> Result<T>) -> Result<T> {
        let _lock = FileLock::exclusive(&self.staging.join("index.lock"))?;
        let mut index = self.index()?;
        let out = change(&mut index.manifests)?;
        self.write_atomic("index.json", &serde_json::to_vec_pretty(&index)?)?;
        Ok(out)
    }

    /// Deletes blobs no tagged manifest reaches; returns the bytes freed.
    pub fn collect_garbage(&self) -> Result<u64> {
        let _gc = FileLock::exclusive(&self.staging.join("gc.lock"))?;
        self.sweep_staging()?;
        let mut live = HashSet::new();
        for entry in self.index()?.manifests {
            live.insert(entry.digest.clone());
            if let Ok(manifest) = self.read_manifest(&entry.digest) {
                live.insert(manifest.config.digest.clone());
                live.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let mut freed = 0;
        for file in fs::read_dir(self.root.join("blobs/sha256"))? {
            let file = file?;
            let digest = format!("sha256:{}", file.file_name().to_string_lossy());
            if !live.contains(&digest) {
                freed += file.metadata()?.len();
                fs::remove_file(file.path())?;
            }
        }
        Ok(freed)
    }

    /// Holds off garbage collection while blobs are written for a manifest
    /// that is not tagged yet.
    pub fn writing(&self) -> Result<FileLock> {
        FileLock::shared(&self.staging.join("gc.lock"))
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.staging)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.root.join(name)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The tag of an index entry.
pub fn ref_name_of(entry: &ImageIndexEntry) -> Option<&str> {
    entry.annotations.as_ref()?.get(media::REF_NAME).map(String::as_str)
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One blob being written: hashed as it goes, moved into the layout only
/// when complete and, if a digest is expected, matching it.
pub struct BlobWriter {
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    root: Layout,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the content against `expected` (when given) and moves it into
    /// the layout. A mismatch discards it: nothing enters the store.
    pub fn commit(self, expected: Option<&str>) -> Result<Blob> {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if let Some(expected) = expected
            && expected != digest
        {
            bail!("content does not match its digest: expected {expected}, got {digest}");
        }
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        let dest = self.root.blob_path(&digest)?;
        if !dest.is_file() {
            file.as_file().sync_all()?;
            // A concurrent writer of the same blob may win the rename: same bytes.
            file.persist(&dest).map_err(|e| e.error)?;
        }
        Ok(Blob { digest, size: self.size })
    }
}

/// An advisory lock on a file (flock), released on drop.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        FileLock::take(path, libc::LOCK_EX)
    }

    pub fn shared(path: &Path) -> Result<FileLock> {
        FileLock::take(path, libc::LOCK_SH)
    }

    /// The exclusive lock if nobody holds the file locked, else `None`.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        match FileLock::take(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(lock) => Ok(Some(lock)),
            Err(e)
                if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::WouldBlock) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn take(path: &Path, how: libc::c_int) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock on a file descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
            return Err(
                anyhow::Error::new(io::Error::last_os_error()).context(format!("locking {}", path.display()))
            );
        }
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path(), dir.path().join("tmp")).unwrap();
        (dir, layout)
    }

    #[test]
    fn a_new_layout_is_valid_and_empty() {
        let (dir, layout) = layout();
        let marker: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("oci-layout")).unwrap()).unwrap();
        assert_eq!(marker["imageLayoutVersion"], "1.0.0");
        let index = layout.index().unwrap();
        assert_eq!((index.schema_version, index.manifests.len()), (2, 0));
    }

    #[test]
    fn blobs_are_named_by_digest_and_checked() {
        let (_dir, layout) = layout();
        let blob = layout.put_bytes(b"hello").unwrap();
        assert_eq!(blob.digest, digest_of(b"hello"));
        assert_eq!(layout.read_blob(&blob.digest).unwrap(), b"hello");
        // A wrong expected digest: rejected, nothing stored.
        let mut w = layout.writer().unwrap();
        w.write_all(b"tampered").unwrap();
        let err = w.commit(Some(&digest_of(b"original"))).unwrap_err().to_string();
        assert!(err.contains("does not match its digest"), "{err}");
        assert!(!layout.has_blob(&digest_of(b"tampered")));
        // A blob corrupted on disk is caught when read.
        fs::write(layout.blob_path(&blob.digest).unwrap(), b"jello").unwrap();
        assert!(layout.read_blob(&blob.digest).unwrap_err().to_string().contains("corrupt"));
        assert!(layout.blob_path("sha256:xyz").is_err());
    }

    #[test]
    fn staging_left_by_a_killed_writer_is_swept_when_nobody_writes() {
        let (dir, layout) = layout();
        let left = dir.path().join("tmp/blob-killed");
        fs::write(&left, b"partial").unwrap();
        {
            let _writing = layout.writing().unwrap();
            Layout::open(dir.path(), dir.path().join("tmp")).unwrap();
            assert!(left.exists(), "swept while a writer was at work");
        }
        Layout::open(dir.path(), dir.path().join("tmp")).unwrap();
        assert!(!left.exists());
    }

    #[test]
    fn tags_replace_and_garbage_goes() {
        let (_dir, layout) = layout();
        let config = layout.put_bytes(b"{}").unwrap();
        let layer = layout.put_bytes(b"layer").unwrap();
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config: config.descriptor(media::MODEL_CONFIG),
            layers: vec![layer.descriptor(media::MODEL_FILE)],
            subject: None,
            artifact_type: Some(media::MODEL_ARTIFACT.into()),
            annotations: None,
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let m = layout.put_manifest("model/a:1", &bytes, BTreeMap::new()).unwrap();
        layout.put_manifest("model/a:1", &bytes, BTreeMap::new()).unwrap();
        assert_eq!(layout.index().unwrap().manifests.len(), 1, "a tag names one manifest");
        assert_eq!(layout.resolve("model/a:1").unwrap().unwrap().digest, m.digest);
        let orphan = layout.put_bytes(b"orphan").unwrap();
        assert_eq!(layout.collect_garbage().unwrap(), 6);
        assert!(!layout.has_blob(&orphan.digest) && layout.has_blob(&layer.digest));
        layout.untag("model/a:1").unwrap().unwrap();
        layout.collect_garbage().unwrap();
        assert!(!layout.has_blob(&layer.digest) && !layout.has_blob(&m.digest));
    }
}
