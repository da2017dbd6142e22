//! A backend's view on disk, so that a restart neither falls back to an older epoch nor forgets
//! which address it has in the view.
//!
//! File `view` in the data directory: magic `RKVIEW1\n`, the epoch (u64), this node's address
//! (u16 length and UTF-8), the view payload of PROTOCOL.md section 7.3 (u32 length and bytes),
//! then a CRC-32 of everything before it; all big-endian. It is replaced atomically (written
//! beside, synced, renamed, directory synced), so it is always the old view or the new one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use byteorder::{BigEndian, ByteOrder};

use crate::protocol::payload;
use crate::ring::View;

const MAGIC: &[u8; 8] = b"RKVIEW1\n";
/// The file's name in the data directory.
pub const VIEW_FILE: &str = "view";

/// A view kept on disk, with the address this node has in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedView {
    pub me: String,
    pub view: View,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(VIEW_FILE)
}

fn invalid(dir: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path(dir).display()),
    )
}

/// Replaces the saved view, durably, before returning.
pub fn save(dir: &Path, saved: &SavedView) -> io::Result<()> {
    let body = payload::encode_view(&saved.view);
    let mut out = Vec::with_capacity(8 + 8 + 2 + saved.me.len() + 4 + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&saved.view.epoch.to_be_bytes());
    let me = saved.me.as_bytes();
    let me_len = u16::try_from(me.len()).map_err(|_| invalid(dir, "address too long"))?;
    out.extend_from_slice(&me_len.to_be_bytes());
    out.extend_from_slice(me);
    let body_len = u32::try_from(body.len()).map_err(|_| invalid(dir, "view too long"))?;
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());

    let tmp = dir.join(format!("{VIEW_FILE}.tmp"));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&out)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path(dir))?;
    fs::File::open(dir)?.sync_all()
}

/// The saved view, `None` when there is none yet.
pub fn load(dir: &Path) -> io::Result<Option<SavedView>> {
    let bytes = match fs::read(path(dir)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < MAGIC.len() + 8 + 2 + 4 + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(invalid(dir, "not a ringkv view file"));
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(content) != BigEndian::read_u32(crc) {
        return Err(invalid(dir, "checksum mismatch"));
    }
    let mut at = MAGIC.len();
    let epoch = BigEndian::read_u64(&content[at..]);
    at += 8;
    let me_len = usize::from(BigEndian::read_u16(&content[at..]));
    at += 2;
    let me = content
        .get(at..at + me_len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| invalid(dir, "bad address"))?
        .to_string();
    at += me_len;
    let body_len = content
        .get(at..at + 4)
        .map(BigEndian::read_u32)
        .ok_or_else(|| invalid(dir, "truncated"))? as usize;
    at += 4;
    let body = content
        .get(at..at + body_len)
        .filter(|_| at + body_len == content.len())
        .ok_or_else(|| invalid(dir, "truncated or trailing bytes"))?;
    let view = payload::decode_view(epoch, body).map_err(|e| invalid(dir, e))?;
    Ok(Some(SavedView { me, view }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{NodeState, Routing, DEFAULT_PLACEMENT};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringkv-view-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_saved_view_loads_back_and_damage_is_refused() {
        let dir = scratch("round-trip");
        assert_eq!(load(&dir).unwrap(), None);
        let mut view = View::new(
            9,
            Routing::Direct,
            DEFAULT_PLACEMENT,
            3,
            vec!["a:1".into(), "b:2".into(), "c:3".into()],
        );
        view.states[1] = NodeState::Down;
        let saved = SavedView {
            me: "c:3".into(),
            view,
        };
        save(&dir, &saved).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(saved.clone()));
        let mut bytes = fs::read(path(&dir)).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        fs::write(path(&dir), &bytes).unwrap();
        assert!(load(&dir).is_err());
        bytes.truncate(20);
        fs::write(path(&dir), &bytes).unwrap();
        assert!(load(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
