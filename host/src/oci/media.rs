//! Media types and annotations of wasmbento's OCI artifacts.
//!
//! A **bento** follows the CNCF TAG Runtime "Wasm OCI Artifact layout":
//! config `application/vnd.wasm.config.v0+json`, the component as a layer of
//! `application/wasm`; its `bento.toml` is one more layer of our own type.
//! It names the models it uses by digest in annotations (one per model:
//! `dev.wasmbento.model.<name the guest uses>` =
//! `<model name>:<version>@sha256:<model manifest digest>`).
//!
//! A **model** is an artifact of its own (`artifactType` below): its config
//! is `model.json` (name, version, source, files), and each file is a layer
//! whose `org.opencontainers.image.title` is its path in the model
//! directory. Two bentos on one model share its blobs.
//!
//! `oci-client`'s own `WASM_*` constants are older names (`v1`, `content.layer`);
//! these are passed explicitly instead.

/// The OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// CNCF Wasm artifact config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// A Wasm component (CNCF Wasm artifact layer).
pub const WASM_LAYER: &str = "application/wasm";
/// A bento's `bento.toml` (the built manifest: APIs, models, defaults).
pub const BENTO_MANIFEST: &str = "application/vnd.wasmbento.bento.manifest.v1+toml";

/// `artifactType` of a model.
pub const MODEL_ARTIFACT: &str = "application/vnd.wasmbento.model.v1";
/// A model's config: `model.json`.
pub const MODEL_CONFIG: &str = "application/vnd.wasmbento.model.config.v1+json";
/// One file of a model.
pub const MODEL_FILE: &str = "application/vnd.wasmbento.model.file.v1";

/// A layer's file name or path (OCI pre-defined annotation).
pub const TITLE: &str = "org.opencontainers.image.title";
/// Creation time, RFC 3339 (OCI pre-defined annotation).
pub const CREATED: &str = "org.opencontainers.image.created";
/// The tag of a manifest in an image layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Prefix of a bento's model references.
pub const MODEL_REF_PREFIX: &str = "dev.wasmbento.model.";
