//! The cluster token: a shared secret that the requests which change what a backend holds or
//! who it serves with (VIEW_INSTALL, the chain writes, the state transfer) must be sent with, so
//! that a mistyped or hostile frontend, or anyone else who can reach a backend, cannot take the
//! members over.
//!
//! A server that opens a connection to a backend sends PEER_AUTH with the token first; the
//! backend marks that connection as a peer's. On a connection that is not, those requests are
//! refused with UNAUTHORIZED, counted and logged. Clients' own requests (PUT, GET, ...) need no
//! token.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::protocol::Opcode;

/// The environment variable a token is read from when no file is given.
pub const ENV: &str = "RINGKV_CLUSTER_TOKEN";
/// The longest token accepted, in bytes.
pub const MAX_LEN: usize = 1024;

/// A cluster token. Its bytes never appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(Vec<u8>);

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterToken({} bytes)", self.0.len())
    }
}

impl ClusterToken {
    /// A token of these bytes: non-empty, at most [`MAX_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ClusterToken> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_LEN {
            return Err(Error::Config(format!(
                "a cluster token has 1 to {MAX_LEN} bytes, not {}",
                bytes.len()
            )));
        }
        Ok(ClusterToken(bytes))
    }

    /// A new random token (32 hex digits from the operating system's random source), as
    /// `ringkv local` makes for its parts.
    pub fn generate() -> Result<ClusterToken> {
        use std::io::Read;
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| Error::Config(format!("cannot read /dev/urandom for a token: {e}")))?;
        ClusterToken::new(
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    }

    /// The token in `file` (surrounding white space, such as the final newline, left out), or
    /// else in `$RINGKV_CLUSTER_TOKEN`, or none.
    pub fn load(file: Option<&Path>) -> Result<Option<ClusterToken>> {
        let trimmed = match file {
            Some(path) => crate::auth::read_secret(path, "cluster token")?,
            None => match std::env::var_os(ENV) {
                Some(value) => crate::auth::trimmed(&value.into_encoded_bytes()),
                None => return Ok(None),
            },
        };
        ClusterToken::new(trimmed).map(Some)
    }

    /// The token's bytes, as PEER_AUTH carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `offered` is this token, compared in a time that does not depend on where they
    /// first differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        crate::auth::constant_time_eq(&self.0, offered)
    }
}

/// The requests a backend takes only from a connection that presented the cluster token.
pub fn is_peer_only(opcode: Opcode) -> bool {
    opcode.is_chain_write()
        || matches!(
            opcode,
            Opcode::VIEW_INSTALL
                | Opcode::SYNC_BEGIN
                | Opcode::SYNC_COPY
                | Opcode::SYNC_DELTA
                | Opcode::SYNC_END
                | Opcode::MEMBER_JOIN
                | Opcode::MEMBER_LEAVE
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself_and_never_shows() {
        let token = ClusterToken::new(b"s3cret".to_vec()).unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret!"));
        assert!(!token.matches(b"S3cret"));
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(ClusterToken::new(Vec::new()).is_err());
        assert!(ClusterToken::new(vec![b'x'; MAX_LEN + 1]).is_err());
    }

    #[test]
    fn a_token_file_is_read_without_its_newline_and_tokens_are_random() {
        let path = std::env::temp_dir().join(format!("ringkv-token-{}", std::process::id()));
        std::fs::write(&path, "abc123\n").unwrap();
        let token = ClusterToken::load(Some(&path)).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(token.matches(b"abc123"));
        assert!(ClusterToken::load(Some(Path::new("/nonexistent/token"))).is_err());
        let (a, b) = (
            ClusterToken::generate().unwrap(),
            ClusterToken::generate().unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 32);
    }
}
