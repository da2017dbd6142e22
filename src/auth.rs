//! Client authentication: the password a server started with `--require-auth FILE` asks of every
//! connection before it serves it, and what a connection presents when it opens (the cluster
//! token, the password, or both).
//!
//! A native connection authenticates once with AUTH (or, between servers, with a PEER_AUTH that
//! carries the cluster token the server holds); until then every other request is answered
//! UNAUTHORIZED and nothing is done. The Redis door takes `AUTH` and `HELLO ... AUTH` as Redis
//! does. A connection that offers a wrong password [`MAX_FAILURES`] times is closed, so that one
//! connection cannot try passwords at the speed of the network.
//!
//! The password guards the data; it is no substitute for a private network: it travels in clear
//! text like Redis's, so on an untrusted network put ringkv behind TLS (stunnel, a VPN).

use std::fmt;
use std::path::Path;

use crate::cluster::token::ClusterToken;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{Frame, Opcode, Status};

/// The environment variable clients (kvcli, the library's users) read a password from when no
/// file is given.
pub const PASSWORD_ENV: &str = "RINGKV_PASSWORD";
/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Wrong passwords one connection may offer before it is closed.
pub const MAX_FAILURES: u32 = 3;

/// A password. Its bytes never appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password({} bytes)", self.0.len())
    }
}

impl Password {
    /// A password of these bytes: non-empty, at most [`MAX_PASSWORD_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Password> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_PASSWORD_LEN {
            return Err(Error::Config(format!(
                "a password has 1 to {MAX_PASSWORD_LEN} bytes, not {}",
                bytes.len()
            )));
        }
        Ok(Password(bytes))
    }

    /// The password in `file`, without the white space around it (such as the final newline).
    pub fn from_file(file: &Path) -> Result<Password> {
        Password::new(read_secret(file, "password")?)
    }

    /// The password in `file`, or else in `$RINGKV_PASSWORD`, or none: what clients use.
    pub fn load(file: Option<&Path>) -> Result<Option<Password>> {
        match file {
            Some(path) => Password::from_file(path).map(Some),
            None => match std::env::var_os(PASSWORD_ENV) {
                Some(value) => Password::new(trimmed(&value.into_encoded_bytes())).map(Some),
                None => Ok(None),
            },
        }
    }

    /// The password's bytes, as AUTH carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `offered` is this password, in a time that does not depend on where they differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        constant_time_eq(&self.0, offered)
    }
}

/// The bytes of a secret kept in `file`, trimmed of surrounding white space; `what` names it in
/// the error.
pub(crate) fn read_secret(file: &Path, what: &str) -> Result<Vec<u8>> {
    let text = std::fs::read(file).map_err(|e| {
        Error::Config(format!(
            "cannot read the {what} file {}: {e}",
            file.display()
        ))
    })?;
    Ok(trimmed(&text))
}

pub(crate) fn trimmed(text: &[u8]) -> Vec<u8> {
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    let end = text.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => text[start..=end].to_vec(),
        _ => Vec::new(),
    }
}

/// Whether `a` equals `b`, comparing every byte whatever the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let differences = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    differences == 0 && a.len() == b.len()
}

/// What a connection presents when it opens: the cluster token (PEER_AUTH), which a server
/// holding the same token also takes as authentication, and the password (AUTH) where no token
/// is given or the server might not hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<ClusterToken>,
    pub password: Option<Password>,
}

impl Credentials {
    /// Whether there is nothing to present.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.password.is_none()
    }

    /// Presents the token and the password on `conn`, a new connection to `addr`. A server
    /// without a password answers AUTH with OK, so presenting one is always safe.
    pub fn present(&self, conn: &mut Connection, addr: &str) -> Result<()> {
        if let Some(token) = &self.token {
            let request =
                Frame::request(Opcode::PEER_AUTH, 0, Vec::new(), token.as_bytes().to_vec());
            expect_ok(conn.call(&request)?, addr, "cluster token")?;
        }
        if let Some(password) = &self.password {
            let request = Frame::request(Opcode::AUTH, 0, Vec::new(), password.as_bytes().to_vec());
            expect_ok(conn.call(&request)?, addr, "password")?;
        }
        Ok(())
    }
}

fn expect_ok(answer: Frame, addr: &str, what: &str) -> Result<()> {
    if answer.status == Status::OK {
        return Ok(());
    }
    Err(Error::Unauthorized {
        addr: addr.to_string(),
        reason: format!(
            "it refused the {what}: {}: {}",
            answer.status,
            answer.message()
        ),
    })
}

/// What one connection has shown of itself so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Session {
    /// It presented the cluster token (PEER_AUTH), or the server has none: peer-only requests
    /// are taken.
    pub trusted: bool,
    /// It may send requests other than AUTH and PEER_AUTH.
    pub authenticated: bool,
    /// Wrong passwords it offered.
    pub failures: u32,
}

impl Session {
    /// A new connection's session on a server that requires a password or not.
    pub fn new(password_required: bool) -> Session {
        Session {
            trusted: false,
            authenticated: !password_required,
            failures: 0,
        }
    }

    /// It has offered too many wrong passwords and is to be closed.
    pub fn locked_out(&self) -> bool {
        self.failures >= MAX_FAILURES
    }

    /// Checks `offered` against the server's `password` and records the outcome: `Ok` if it
    /// may go on (right password, or none required), else the message to answer with.
    pub fn offer(
        &mut self,
        password: Option<&Password>,
        offered: &[u8],
    ) -> std::result::Result<(), String> {
        match password {
            Some(password) if !password.matches(offered) => {
                self.failures += 1;
                if self.locked_out() {
                    Err(format!(
                        "wrong password; {MAX_FAILURES} wrong passwords on one connection close it"
                    ))
                } else {
                    Err("wrong password".to_string())
                }
            }
            _ => {
                self.authenticated = true;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_matches_only_itself_and_never_shows() {
        let password = Password::new(b"hunter2".to_vec()).unwrap();
        assert!(password.matches(b"hunter2"));
        assert!(!password.matches(b"hunter"));
        assert!(!password.matches(b"hunter22"));
        assert!(!format!("{password:?}").contains("hunter2"));
        assert!(Password::new(Vec::new()).is_err());
        assert!(Password::new(vec![b'x'; MAX_PASSWORD_LEN + 1]).is_err());
    }

    #[test]
    fn a_password_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("ringkv-password-{}", std::process::id()));
        std::fs::write(&path, "  s3cret\n").unwrap();
        let password = Password::load(Some(&path)).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(password.matches(b"s3cret"));
        assert!(Password::from_file(Path::new("/nonexistent/password")).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(
            Password::from_file(&path).is_err(),
            "an empty file is no password"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_session_is_locked_out_after_the_last_wrong_password() {
        let password = Password::new(b"right".to_vec()).unwrap();
        let mut session = Session::new(true);
        assert!(!session.authenticated);
        for _ in 1..MAX_FAILURES {
            assert_eq!(
                session.offer(Some(&password), b"wrong"),
                Err("wrong password".into())
            );
            assert!(!session.locked_out());
        }
        assert!(session.offer(Some(&password), b"wrong").is_err());
        assert!(session.locked_out());
        assert!(!session.authenticated);

        let mut session = Session::new(true);
        assert!(session.offer(Some(&password), b"right").is_ok());
        assert!(session.authenticated);
        let mut open = Session::new(false);
        assert!(open.authenticated);
        assert!(open.offer(None, b"anything").is_ok());
    }
}
