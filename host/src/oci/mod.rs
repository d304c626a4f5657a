//! Bentos and models as OCI artifacts.
//!
//! * [`media`]: the media types and annotations of our artifacts (the
//!   format, documented in `docs/oci-format.md`);
//! * [`layout`]: an OCI image layout on disk, which is what the local store
//!   is: standard tools (`skopeo`, `oras`) read it;
//! * [`registry`]: push to and pull from any OCI registry;
//! * [`credentials`]: `wasmbento login` and docker's `config.json`.

pub mod credentials;
pub mod layout;
pub mod media;
pub mod registry;

pub use layout::Layout;

/// Checks a `sha256:<64 hex>` digest and returns its hex part.
pub fn sha256_hex(digest: &str) -> anyhow::Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => anyhow::bail!("{digest:?} is not a sha256 digest (sha256:<64 lowercase hex digits>)"),
    }
}
