//! Structured values carried in frames: node reports (SIZE, STATS) and views (VIEW_INSTALL).
//!
//! Every decoder here reads with bounds checks and fails with [`Error::Payload`] on short or
//! inconsistent input; none of them can panic or allocate more than the bytes it was given.

use byteorder::{BigEndian, ByteOrder};

use super::Status;
use crate::error::{Error, Result};
use crate::ring::{NodeState, Placement, Routing, View};

/// One node's answer to SIZE or STATS, as the frontend relays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node's address as it appears in the view.
    pub addr: String,
    /// OK, or why the node could not report (UNAVAILABLE, ...).
    pub status: Status,
    /// Empty when the status is OK; otherwise the explanation.
    pub message: String,
    /// Named counters, in the order the node sent them.
    pub counters: Vec<(String, u64)>,
}

impl NodeReport {
    /// A report that the node at `addr` could not answer.
    pub fn failed(addr: &str, status: Status, message: impl Into<String>) -> NodeReport {
        NodeReport {
            addr: addr.to_string(),
            status,
            message: message.into(),
            counters: Vec::new(),
        }
    }

    /// The counter called `name`, or 0 if the node did not send it.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// What makes a write safe to send again (PUT_ONCE, DELETE_ONCE and their chain forms): who
/// sent it and which of its writes it is. It leads the value; PROTOCOL.md section 7.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteTag {
    /// The sender's client id, chosen at random; never 0.
    pub client: u64,
    /// The write's sequence number among the client's writes; never 0. A retry carries the
    /// same one.
    pub seq: u64,
    /// The client has the answers of all its writes numbered below this, and never sends
    /// them again.
    pub below: u64,
    /// 1 the first time the write is sent, 2 or more when it is sent again (0 counts as 1).
    pub attempt: u32,
}

impl WriteTag {
    /// Bytes of a tag on the wire.
    pub const LEN: usize = 28;

    /// The tag at the start of a tagged request's value, and the rest of the value.
    pub fn split(value: &[u8]) -> Result<(WriteTag, &[u8])> {
        if value.len() < WriteTag::LEN {
            return Err(Error::Payload(format!(
                "a write tag takes {} bytes, the value has {}",
                WriteTag::LEN,
                value.len()
            )));
        }
        let (tag, rest) = value.split_at(WriteTag::LEN);
        let tag = WriteTag {
            client: BigEndian::read_u64(&tag[0..8]),
            seq: BigEndian::read_u64(&tag[8..16]),
            below: BigEndian::read_u64(&tag[16..24]),
            attempt: BigEndian::read_u32(&tag[24..28]),
        };
        if tag.client == 0 || tag.seq == 0 {
            return Err(Error::Payload(
                "a write tag's client id and sequence number must not be 0".into(),
            ));
        }
        Ok((tag, rest))
    }

    /// The value of a tagged request: this tag, then `data`.
    pub fn prefix(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(WriteTag::LEN + data.len());
        out.extend_from_slice(&self.bytes());
        out.extend_from_slice(data);
        out
    }

    /// The tag as it starts a tagged request's value.
    pub fn bytes(&self) -> [u8; WriteTag::LEN] {
        let mut out = [0u8; WriteTag::LEN];
        out[..8].copy_from_slice(&self.client.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.below.to_be_bytes());
        out[24..].copy_from_slice(&self.attempt.to_be_bytes());
        out
    }

    /// Whether this copy of the write is a resend: an earlier copy may have been applied.
    pub fn is_resend(&self) -> bool {
        self.attempt > 1
    }

    /// The same write, marked as sent once more.
    pub fn resent(&self) -> WriteTag {
        WriteTag {
            attempt: self.attempt.max(1).saturating_add(1),
            ..*self
        }
    }
}

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Payload(format!(
                "{} ends early: needed {n} more bytes, {} left",
                self.what,
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(BigEndian::read_u16(self.take(2)?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(BigEndian::read_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }
    fn string(&mut self, len: usize) -> Result<String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Payload(format!("{} holds a string that is not UTF-8", self.what)))
    }
    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Payload(format!(
                "{} has {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a length-prefixed (u16) string, cut at 65,535 bytes on a character boundary.
fn put_str16(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u16(out, end as u16);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Encodes a list of node reports (the value of a SIZE or STATS answer).
pub fn encode_reports(reports: &[NodeReport]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u16(&mut out, reports.len().min(u16::MAX as usize) as u16);
    for report in reports.iter().take(u16::MAX as usize) {
        put_str16(&mut out, &report.addr);
        out.push(report.status.0);
        put_str16(&mut out, &report.message);
        let counters = &report.counters[..report.counters.len().min(u16::MAX as usize)];
        put_u16(&mut out, counters.len() as u16);
        for (name, value) in counters {
            let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    out
}

/// Decodes a list of node reports.
pub fn decode_reports(buf: &[u8]) -> Result<Vec<NodeReport>> {
    let mut r = Reader {
        buf,
        what: "node report list",
    };
    let count = r.u16()?;
    let mut reports = Vec::new();
    for _ in 0..count {
        let addr_len = r.u16()? as usize;
        let addr = r.string(addr_len)?;
        let status = Status(r.u8()?);
        let message_len = r.u16()? as usize;
        let message = r.string(message_len)?;
        let counter_count = r.u16()?;
        let mut counters = Vec::new();
        for _ in 0..counter_count {
            let name_len = r.u8()? as usize;
            let name = r.string(name_len)?;
            counters.push((name, r.u64()?));
        }
        reports.push(NodeReport {
            addr,
            status,
            message,
            counters,
        });
    }
    r.finish()?;
    Ok(reports)
}

/// Encodes a view (the value of a VIEW_INSTALL request; the epoch travels in the header).
pub fn encode_view(view: &View) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(view.routing as u8);
    out.push(view.placement.kind());
    let mut parameter = [0u8; 4];
    BigEndian::write_u32(&mut parameter, view.placement.parameter());
    out.extend_from_slice(&parameter);
    out.push(view.replicas.min(usize::from(u8::MAX)) as u8);
    put_u16(&mut out, view.nodes.len().min(u16::MAX as usize) as u16);
    for (index, node) in view.nodes.iter().enumerate().take(u16::MAX as usize) {
        put_str16(&mut out, node);
        out.push(view.states.get(index).copied().unwrap_or(NodeState::Up) as u8);
        out.extend_from_slice(&view.since.get(index).copied().unwrap_or(0).to_be_bytes());
    }
    if matches!(view.placement, Placement::Partitions { .. }) {
        let owners = if view.owners.is_empty() {
            match view.placement {
                Placement::Partitions { count } => crate::ring::deal_owners(&view.nodes, count),
                Placement::Hashed { .. } => Vec::new(),
            }
        } else {
            view.owners.clone()
        };
        for owner in owners {
            put_u16(&mut out, owner);
        }
        out.push(u8::from(view.is_moving()));
        for &owner in &view.target {
            put_u16(&mut out, owner);
        }
    }
    out
}

/// Decodes a view; `epoch` comes from the frame header.
pub fn decode_view(epoch: u64, buf: &[u8]) -> Result<View> {
    let mut r = Reader { buf, what: "view" };
    let routing_byte = r.u8()?;
    let routing = Routing::from_u8(routing_byte)
        .ok_or_else(|| Error::Payload(format!("unknown routing mode {routing_byte}")))?;
    let placement_kind = r.u8()?;
    let parameter = r.u32()?;
    let placement = Placement::from_wire(placement_kind, parameter).ok_or_else(|| {
        Error::Payload(format!(
            "unknown placement {placement_kind} (or parameter {parameter} out of range)"
        ))
    })?;
    let replicas = usize::from(r.u8()?);
    let count = r.u16()?;
    let mut nodes = Vec::new();
    let mut states = Vec::new();
    let mut since = Vec::new();
    for _ in 0..count {
        let len = r.u16()? as usize;
        nodes.push(r.string(len)?);
        let state = r.u8()?;
        states.push(
            NodeState::from_u8(state)
                .ok_or_else(|| Error::Payload(format!("unknown node state {state}")))?,
        );
        since.push(r.u64()?);
    }
    let mut owners = Vec::new();
    let mut target = Vec::new();
    // A view kept before the owner table was: the table is the deal of its node list.
    if let (Placement::Partitions { count }, false) = (placement, r.buf.is_empty()) {
        if count > crate::ring::MAX_PARTITIONS {
            return Err(Error::Payload(format!("{count} partitions is too many")));
        }
        let table = |r: &mut Reader| -> Result<Vec<u16>> { (0..count).map(|_| r.u16()).collect() };
        owners = table(&mut r)?;
        match r.u8()? {
            0 => {}
            1 => target = table(&mut r)?,
            other => return Err(Error::Payload(format!("moving flag {other} is not 0 or 1"))),
        }
    }
    r.finish()?;
    Ok(View {
        epoch,
        routing,
        placement,
        replicas,
        nodes,
        states,
        since,
        owners,
        target,
    })
}

/// One key of a state transfer batch: its value, or `None` when the source no longer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its value at the source when the batch was made; `None`: deleted (or expired) there.
    pub value: Option<Vec<u8>>,
    /// When the value expires, Unix milliseconds; `None`: never (or no value).
    pub expires_at: Option<u64>,
}

/// The value of a SYNC_COPY or SYNC_DELTA answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferBatch {
    /// SYNC_COPY: the snapshot index to ask for next (the snapshot's length when done).
    /// SYNC_DELTA: how many recorded keys are still waiting after this batch.
    pub next: u64,
    /// The keys.
    pub entries: Vec<TransferEntry>,
}

impl TransferBatch {
    /// Bytes an entry takes on the wire.
    pub fn entry_len(key: &[u8], value: Option<&[u8]>, expires_at: Option<u64>) -> usize {
        9 + key.len() + value.map_or(0, <[u8]>::len) + if expires_at.is_some() { 8 } else { 0 }
    }
}

/// Encodes a transfer batch: u64 next, u32 count, then per entry u8 deleted (0), present (1)
/// or present and expiring (2, followed by the u64 Unix time in milliseconds it expires at), u32
/// key length, key, u32 value length, value.
pub fn encode_transfer_batch(batch: &TransferBatch) -> Vec<u8> {
    let size: usize = batch
        .entries
        .iter()
        .map(|e| TransferBatch::entry_len(&e.key, e.value.as_deref(), e.expires_at))
        .sum();
    let mut out = Vec::with_capacity(12 + size);
    out.extend_from_slice(&batch.next.to_be_bytes());
    out.extend_from_slice(&(batch.entries.len() as u32).to_be_bytes());
    for entry in &batch.entries {
        match (&entry.value, entry.expires_at) {
            (None, _) => out.push(0),
            (Some(_), None) => out.push(1),
            (Some(_), Some(at)) => {
                out.push(2);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        out.extend_from_slice(&(entry.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry.key);
        let value = entry.value.as_deref().unwrap_or_default();
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Decodes a transfer batch.
pub fn decode_transfer_batch(buf: &[u8]) -> Result<TransferBatch> {
    let mut r = Reader {
        buf,
        what: "transfer batch",
    };
    let next = r.u64()?;
    let count = r.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let (present, expires_at) = match r.u8()? {
            0 => (false, None),
            1 => (true, None),
            2 => (true, Some(r.u64()?)),
            other => {
                return Err(Error::Payload(format!(
                    "transfer entry flag {other} is not 0, 1 or 2"
                )))
            }
        };
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?.to_vec();
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?.to_vec();
        if !present && !value.is_empty() {
            return Err(Error::Payload(
                "a deleted transfer entry has a value".into(),
            ));
        }
        entries.push(TransferEntry {
            key,
            value: present.then_some(value),
            expires_at,
        });
    }
    r.finish()?;
    Ok(TransferBatch { next, entries })
}

/// Encodes the point list of a SYNC_BEGIN: u32 count, then each point index as u32.
pub fn encode_points(points: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * points.len());
    out.extend_from_slice(&(points.len() as u32).to_be_bytes());
    for point in points {
        out.extend_from_slice(&point.to_be_bytes());
    }
    out
}

/// Decodes the point list of a SYNC_BEGIN.
pub fn decode_points(buf: &[u8]) -> Result<Vec<u32>> {
    let mut r = Reader {
        buf,
        what: "point list",
    };
    let count = r.u32()? as usize;
    // Each point takes 4 bytes: a count the buffer cannot hold is refused before allocating.
    if count > r.buf.len() / 4 {
        return Err(Error::Payload(format!(
            "point list announces {count} points in {} bytes",
            r.buf.len()
        )));
    }
    let mut points = Vec::with_capacity(count);
    for _ in 0..count {
        points.push(r.u32()?);
    }
    r.finish()?;
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_tag_leads_the_value_and_refuses_zero_ids() {
        let tag = WriteTag {
            client: 0x0102_0304_0506_0708,
            seq: 9,
            below: 7,
            attempt: 1,
        };
        let value = tag.prefix(b"data");
        assert_eq!(value.len(), WriteTag::LEN + 4);
        assert_eq!(&value[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (back, rest) = WriteTag::split(&value).unwrap();
        assert_eq!((back, rest), (tag, &b"data"[..]));
        assert!(WriteTag::split(&value[..WriteTag::LEN - 1]).is_err());
        assert!(!tag.is_resend());
        assert!(tag.resent().is_resend());
        assert_eq!(WriteTag { attempt: 0, ..tag }.resent().attempt, 2);
        let no_client = WriteTag { client: 0, ..tag }.prefix(b"");
        assert!(WriteTag::split(&no_client).is_err());
        let no_seq = WriteTag { seq: 0, ..tag }.prefix(b"");
        assert!(WriteTag::split(&no_seq).is_err());
    }

    #[test]
    fn reports_round_trip() {
        let reports = vec![
            NodeReport {
                addr: "127.0.0.1:4001".into(),
                status: Status::OK,
                message: String::new(),
                counters: vec![("keys".into(), 3), ("bytes".into(), 99)],
            },
            NodeReport::failed("127.0.0.1:4002", Status::UNAVAILABLE, "connection refused"),
        ];
        let bytes = encode_reports(&reports);
        assert_eq!(decode_reports(&bytes).unwrap(), reports);
    }

    #[test]
    fn truncated_reports_are_errors_at_every_cut() {
        let reports = vec![NodeReport {
            addr: "a:1".into(),
            status: Status::OK,
            message: String::new(),
            counters: vec![("keys".into(), 1)],
        }];
        let bytes = encode_reports(&reports);
        for cut in 0..bytes.len() {
            assert!(decode_reports(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_reports(&longer).is_err());
    }

    #[test]
    fn transfer_batches_and_point_lists_round_trip_and_refuse_truncation() {
        let batch = TransferBatch {
            next: 42,
            entries: vec![
                TransferEntry {
                    key: b"k1".to_vec(),
                    value: Some(b"value".to_vec()),
                    expires_at: None,
                },
                TransferEntry {
                    key: b"gone".to_vec(),
                    value: None,
                    expires_at: None,
                },
                TransferEntry {
                    key: b"empty".to_vec(),
                    value: Some(Vec::new()),
                    expires_at: None,
                },
                TransferEntry {
                    key: b"cached".to_vec(),
                    value: Some(b"for a while".to_vec()),
                    expires_at: Some(1_700_000_000_123),
                },
            ],
        };
        let bytes = encode_transfer_batch(&batch);
        assert_eq!(decode_transfer_batch(&bytes).unwrap(), batch);
        for cut in 0..bytes.len() {
            assert!(
                decode_transfer_batch(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let points = encode_points(&[0, 7, 1023]);
        assert_eq!(decode_points(&points).unwrap(), vec![0, 7, 1023]);
        for cut in 0..points.len() {
            assert!(decode_points(&points[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(decode_points(&huge).is_err());
    }

    #[test]
    fn view_round_trip_and_truncation() {
        let mut view = View::new(
            7,
            Routing::Successor,
            Placement::Partitions { count: 64 },
            2,
            vec!["10.0.0.1:4000".into(), "10.0.0.2:4000".into()],
        );
        view.states[1] = NodeState::Down;
        view.since[1] = 6;
        view.target = crate::ring::join_owners(&view.owners, 1, "10.0.0.2:4000");
        let bytes = encode_view(&view);
        assert_eq!(decode_view(7, &bytes).unwrap(), view);
        // A view kept before the owner table was ends after its node list.
        let legacy = bytes.len() - 1 - 2 * 64 * 2;
        for cut in 0..bytes.len() {
            if cut != legacy {
                assert!(decode_view(7, &bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let old = decode_view(7, &bytes[..legacy]).unwrap();
        assert!(old.owners.is_empty() && !old.is_moving());
        let filled = crate::ring::Ring::new(old).unwrap();
        assert_eq!(filled.view().owners, view.owners);
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(decode_view(7, &bad).is_err());
        let mut flag = bytes.clone();
        flag[legacy + 2 * 64] = 2;
        assert!(decode_view(7, &flag).is_err());
    }
}
