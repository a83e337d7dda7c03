//! The reporter's credential: a projected ServiceAccount token (audience
//! [`TOKEN_AUDIENCE`](inflight_proto::names::TOKEN_AUDIENCE)) read from a file that kubelet
//! rewrites before it expires. Each stream opens with the token the file holds then; a stream
//! whose token was rotated is ended cleanly after its last report and opened again at once with
//! the new one, so no stream outlives its token and no report waits for a reconnect backoff.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// A token file is a JWT of about a kilobyte; anything much larger is not one.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Where the token is read from; `None`: no token is sent (an aggregator with `--ingest-auth
/// none`, on loopback).
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    path: Option<PathBuf>,
}

/// What identifies one version of the file: kubelet replaces it (a new inode behind the same
/// name), it does not write into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

/// The token as a stream opened with it: what went out (if anything) and which version of the
/// file that was, so that a file that stays unreadable is not taken for a rotation each second.
#[derive(Debug, Clone, Default)]
pub(crate) struct Opened {
    header: Option<AsciiMetadataValue>,
    version: Option<Version>,
}

impl Opened {
    pub(crate) fn insert(&self, metadata: &mut MetadataMap) {
        if let Some(header) = &self.header {
            metadata.insert(inflight_proto::names::TOKEN_HEADER, header.clone());
        }
    }
}

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Version {
        modified: m.modified().ok(),
        inode: m.ino(),
        len: m.len(),
    })
}

impl TokenFile {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The token the file holds now, for a stream about to open. No file: no token. A file that
    /// is there but unreadable or not a token is an error (the stream then goes without one, and
    /// the aggregator's refusal says so).
    pub(crate) fn open(&self) -> (Opened, Option<String>) {
        let Some(path) = &self.path else {
            return (Opened::default(), None);
        };
        let version = version(path);
        let opened = |header| Opened { header, version };
        let Some(v) = version else {
            return (opened(None), None);
        };
        if v.len > MAX_TOKEN_BYTES {
            let e = format!(
                "token file {}: {} bytes, more than a token's {MAX_TOKEN_BYTES}",
                path.display(),
                v.len
            );
            return (opened(None), Some(e));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                return (
                    opened(None),
                    Some(format!("token file {}: {e}", path.display())),
                )
            }
        };
        let token = text.trim();
        if token.is_empty() {
            return (
                opened(None),
                Some(format!("token file {} is empty", path.display())),
            );
        }
        // A JWT is base64url and dots; the header type would take any byte above 0x7f.
        let header = token
            .bytes()
            .all(|b| b.is_ascii_graphic())
            .then(|| format!("Bearer {token}").parse::<AsciiMetadataValue>().ok())
            .flatten();
        match header {
            Some(header) => (opened(Some(header)), None),
            None => (
                opened(None),
                Some(format!(
                    "token file {} holds no token (not ASCII)",
                    path.display()
                )),
            ),
        }
    }

    /// Whether the file is another than the one `opened` read (or appeared since): checked
    /// before each report, a `stat` a second. A file that went is no rotation: the stream keeps
    /// the token it has.
    pub(crate) fn rotated(&self, opened: &Opened) -> bool {
        self.path
            .as_deref()
            .and_then(version)
            .is_some_and(|now| Some(now) != opened.version)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "inflight-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn header(opened: &Opened) -> Option<String> {
        let mut md = MetadataMap::new();
        opened.insert(&mut md);
        md.get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_token_is_sent_as_a_bearer_and_a_replaced_file_is_a_rotation() {
        let d = dir();
        let path = d.join("token");
        let file = TokenFile::new(Some(path.clone()));
        let (none, error) = file.open();
        assert_eq!(
            (header(&none), error),
            (None, None),
            "no file yet: no token"
        );
        assert!(!file.rotated(&none));

        std::fs::write(&path, "aaa.bbb.ccc\n").unwrap();
        assert!(file.rotated(&none), "a token appeared");
        let (first, error) = file.open();
        assert_eq!(error, None);
        assert_eq!(header(&first).as_deref(), Some("Bearer aaa.bbb.ccc"));
        assert!(!file.rotated(&first));

        // As kubelet does it: a new file renamed over the old name.
        let next = d.join("token.new");
        std::fs::write(&next, "ddd.eee.fff\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(file.rotated(&first));
        let (second, _) = file.open();
        assert_eq!(header(&second).as_deref(), Some("Bearer ddd.eee.fff"));
        assert!(!file.rotated(&second));
        std::fs::remove_file(&path).unwrap();
        assert!(!file.rotated(&second), "a file that went is no rotation");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn what_is_not_a_token_is_an_error_naming_the_file_and_no_rotation() {
        let d = dir();
        let path = d.join("token");
        let file = TokenFile::new(Some(path.clone()));
        for (content, says) in [
            (b"  \n".to_vec(), "empty"),
            ("t\u{f6}k\u{e9}n".as_bytes().to_vec(), "not ASCII"),
            (vec![b'a'; 20_000], "bytes"),
        ] {
            std::fs::write(&path, content).unwrap();
            let (opened, error) = file.open();
            assert_eq!(header(&opened), None);
            let error = error.unwrap();
            assert!(error.contains(says) && error.contains("token"), "{error}");
            assert!(!file.rotated(&opened), "the same bad file is no rotation");
        }
        assert!(TokenFile::new(None).open().1.is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
