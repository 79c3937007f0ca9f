//! Xenstore path rules: absolute paths, paths relative to `/local/domain/<domid>`, the
//! `@introduceDomain` / `@releaseDomain` specials, allowed characters and length limits.

use crate::wire::{ABS_PATH_MAX, REL_PATH_MAX};

/// Watchable special event fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Watchable special event fired when a domain is released, shuts down or is destroyed.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Why a path is not acceptable. The server answers all of these with `EINVAL`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {path:?} contains {ch:?}; allowed are ASCII letters, digits and - / _ @")]
    BadCharacter { path: String, ch: char },
    #[error("path {path:?} has an empty component (doubled or trailing '/')")]
    EmptyComponent { path: String },
    #[error("path is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("special path {path:?} is not a node (only watches may name it)")]
    Special { path: String },
}

/// The home of a domain, base of its relative paths.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// A path as a client sent it, resolved to the absolute node path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPath {
    /// Absolute path (or the special name, for `@` paths).
    pub abs: String,
    /// Bytes of `abs` that were not in the client's text (the relative prefix), so events
    /// can be reported with the path as the client wrote it.
    pub prefix_len: usize,
}

impl ResolvedPath {
    pub fn is_special(&self) -> bool {
        self.abs.starts_with('@')
    }
}

/// Validates `raw` as sent by a client of domain `domid`. `allow_special` admits `@name`
/// (watches only).
pub fn resolve(raw: &[u8], domid: u32, allow_special: bool) -> Result<ResolvedPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    let text = String::from_utf8_lossy(raw);
    if let Some(&bad) = raw.iter().find(|b| !valid_char(**b)) {
        return Err(PathError::BadCharacter {
            path: text.into_owned(),
            ch: char::from(bad),
        });
    }
    // All bytes are ASCII now.
    let text = text.into_owned();
    if text.starts_with('@') {
        if !allow_special {
            return Err(PathError::Special { path: text });
        }
        if text.len() > ABS_PATH_MAX {
            return Err(PathError::TooLong {
                len: text.len(),
                max: ABS_PATH_MAX,
            });
        }
        return Ok(ResolvedPath {
            abs: text,
            prefix_len: 0,
        });
    }
    let (abs, prefix_len) = if text.starts_with('/') {
        (text, 0)
    } else {
        if text.len() > REL_PATH_MAX {
            return Err(PathError::TooLong {
                len: text.len(),
                max: REL_PATH_MAX,
            });
        }
        let prefix = format!("{}/", domain_path(domid));
        let n = prefix.len();
        (prefix + &text, n)
    };
    if abs.len() > ABS_PATH_MAX {
        return Err(PathError::TooLong {
            len: abs.len(),
            max: ABS_PATH_MAX,
        });
    }
    if abs != "/" && (abs.ends_with('/') || abs.contains("//")) {
        return Err(PathError::EmptyComponent { path: abs });
    }
    Ok(ResolvedPath { abs, prefix_len })
}

/// The parent of an absolute node path; `None` for the root.
pub fn parent(abs: &str) -> Option<&str> {
    if abs == "/" {
        return None;
    }
    match abs.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&abs[..i]),
        None => None,
    }
}

/// The last component of an absolute node path.
pub fn basename(abs: &str) -> &str {
    abs.rsplit('/').next().unwrap_or(abs)
}

/// Joins a child name to an absolute node path.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// True if `node` is `ancestor` or lies below it.
pub fn is_at_or_below(node: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return node.starts_with('/');
    }
    node == ancestor
        || (node.len() > ancestor.len()
            && node.starts_with(ancestor)
            && node.as_bytes()[ancestor.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_relative() {
        let p = resolve(b"/local/domain/3/x", 0, false).unwrap();
        assert_eq!(p.abs, "/local/domain/3/x");
        assert_eq!(p.prefix_len, 0);
        let r = resolve(b"device/vif", 7, false).unwrap();
        assert_eq!(r.abs, "/local/domain/7/device/vif");
        assert_eq!(&r.abs[r.prefix_len..], "device/vif");
        assert_eq!(resolve(b"/", 0, false).unwrap().abs, "/");
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(resolve(b"", 0, false), Err(PathError::Empty));
        assert!(matches!(
            resolve(b"/a//b", 0, false),
            Err(PathError::EmptyComponent { .. })
        ));
        assert!(matches!(
            resolve(b"/a/", 0, false),
            Err(PathError::EmptyComponent { .. })
        ));
        assert!(matches!(
            resolve(b"/a b", 0, false),
            Err(PathError::BadCharacter { .. })
        ));
        assert!(matches!(
            resolve(b"/a.b", 0, false),
            Err(PathError::BadCharacter { .. })
        ));
        assert!(matches!(
            resolve(b"@releaseDomain", 0, false),
            Err(PathError::Special { .. })
        ));
        assert!(resolve(b"@releaseDomain", 0, true).unwrap().is_special());
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert!(matches!(
            resolve(long.as_bytes(), 0, false),
            Err(PathError::TooLong { .. })
        ));
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert!(matches!(
            resolve(rel.as_bytes(), 0, false),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn tree_helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(child("/", "a"), "/a");
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert!(is_at_or_below("/ab", "/"));
    }
}
