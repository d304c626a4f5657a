//! Tags name models and bentos: `name[:version]`, with BentoML's rules.
//!
//! Each part is lowercase `[a-z0-9]([-._a-z0-9]*[a-z0-9])?` and at most 63
//! characters. A missing version, or `latest`, means the newest one in the
//! store (resolved by [`crate::store`]).

use std::fmt;
use std::str::FromStr;

/// The version that resolves to the newest stored one.
pub const LATEST: &str = "latest";

const MAX_PART_LEN: usize = 63;

/// `name:version` (the version may still be `latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    pub name: String,
    pub version: String,
}

/// A tag that breaks the naming rules; the message says which rule.
#[derive(Debug, thiserror::Error)]
#[error("invalid tag {tag:?}: {reason}")]
pub struct TagError {
    tag: String,
    reason: String,
}

impl Tag {
    /// A tag from parts that are already known to be valid.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Result<Tag, TagError> {
        let tag = Tag { name: name.into(), version: version.into() };
        check_part(&tag.to_string(), "name", &tag.name)?;
        check_part(&tag.to_string(), "version", &tag.version)?;
        Ok(tag)
    }

    /// Whether the version still has to be resolved against a store.
    pub fn is_latest(&self) -> bool {
        self.version == LATEST
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Tag, TagError> {
        let (name, version) = match s.split_once(':') {
            Some((name, version)) => (name, version),
            None => (s, LATEST),
        };
        check_part(s, "name", name)?;
        check_part(s, "version", version)?;
        Ok(Tag { name: name.to_string(), version: version.to_string() })
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

/// Checks one part of a tag (a name or a version).
pub fn check_part(tag: &str, what: &str, part: &str) -> Result<(), TagError> {
    let fail = |reason: String| Err(TagError { tag: tag.to_string(), reason });
    if part.is_empty() {
        return fail(format!("the {what} is empty"));
    }
    if part.len() > MAX_PART_LEN {
        return fail(format!(
            "the {what} is {} characters long, at most {MAX_PART_LEN} are allowed",
            part.len()
        ));
    }
    if let Some(c) = part.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '.' | '_')) {
        return fail(format!(
            "the {what} contains {c:?}; only lowercase letters, digits, '-', '.' and '_' are allowed"
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !part.starts_with(alnum) || !part.ends_with(alnum) {
        return fail(format!("the {what} must start and end with a lowercase letter or a digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_version() {
        let tag: Tag = "all-minilm-l6-v2:1.0.a_b".parse().unwrap();
        assert_eq!(tag.name, "all-minilm-l6-v2");
        assert_eq!(tag.version, "1.0.a_b");
        assert!(!tag.is_latest());
    }

    #[test]
    fn missing_version_means_latest() {
        let tag: Tag = "hello".parse().unwrap();
        assert!(tag.is_latest());
        assert_eq!(tag.to_string(), "hello:latest");
    }

    #[test]
    fn rejects_what_bentoml_rejects() {
        for (bad, needle) in [
            ("Hello", "contains 'H'"),
            ("hello:", "version is empty"),
            ("-hello", "must start and end"),
            ("hello.", "must start and end"),
            ("he llo", "contains ' '"),
            ("a:b:c", "contains ':'"),
        ] {
            let err = bad.parse::<Tag>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = "a".repeat(64);
        let err = long.parse::<Tag>().unwrap_err().to_string();
        assert!(err.contains("64 characters long"), "{err}");
        assert!("a".repeat(63).parse::<Tag>().is_ok());
    }
}
