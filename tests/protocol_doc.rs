//! Keeps PROTOCOL.md honest: its hex examples must be what the codec produces (and what a running
//! frontend sends), its ring example must follow the ownership rule, and every opcode and status
//! must appear with its number.
//!
//! Hex blocks in the document are fenced with an info string `ringkv-frame NAME`,
//! `ringkv-payload NAME` or `ringkv-ring`; on each line, text after `|` is commentary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringkv::protocol::payload::{self, NodeReport};
use ringkv::protocol::{self, Frame, Kind, Limits, Opcode, Status, DEFAULT_HOP_LIMIT, MIN_FRAME};
use ringkv::ring::{self, Placement, Ring, Routing, View};
use ringkv::{BackendConfig, FrontendConfig, LocalCluster};

const DOC: &str = include_str!("../PROTOCOL.md");

/// Every fenced block whose info string is `kind` followed by a name (or nothing), as
/// (name, body) in document order.
fn blocks(kind: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim().strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        if words.next() != Some(kind) {
            continue;
        }
        let name = words.next().unwrap_or("").to_string();
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.trim().starts_with("```") {
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        found.push((name, body));
    }
    found
}

/// The one block of `kind` called `name`.
fn block(kind: &str, name: &str) -> String {
    let matching: Vec<String> = blocks(kind)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "PROTOCOL.md should have exactly one ```{kind} {name} block"
    );
    matching.into_iter().next().unwrap()
}

/// The bytes of a hex block: two-digit hex tokens before any `|` on each line.
fn hex_bytes(body: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in body.lines() {
        let data = line.split('|').next().unwrap_or("");
        for token in data.split_whitespace() {
            assert_eq!(token.len(), 2, "not a hex byte: {token:?} in line {line:?}");
            let byte = u8::from_str_radix(token, 16)
                .unwrap_or_else(|_| panic!("not a hex byte: {token:?} in line {line:?}"));
            bytes.push(byte);
        }
    }
    bytes
}

fn frame_bytes(name: &str) -> Vec<u8> {
    hex_bytes(&block("ringkv-frame", name))
}

/// The answer a frontend in front of one backend gives: the backend echoes the hop limit and
/// epoch the frontend set on the request.
fn frontend_answer(request: &Frame, status: Status) -> Frame {
    let mut answer = request.reply(status, Vec::new());
    answer.hop_limit = DEFAULT_HOP_LIMIT;
    answer.epoch = 1;
    answer
}

/// The frames of section 19, by block name, built without looking at the document.
fn worked_frames() -> Vec<(&'static str, Frame)> {
    let put = Frame::request(Opcode::PUT, 1, b"hello".to_vec(), b"world".to_vec());
    let get = Frame::request(Opcode::GET, 2, b"missing".to_vec(), Vec::new());
    vec![
        ("put-answer", frontend_answer(&put, Status::OK)),
        ("put-request", put),
        ("get-answer", frontend_answer(&get, Status::NOT_FOUND)),
        ("get-request", get),
    ]
}

#[test]
fn worked_frames_are_what_the_encoder_produces_and_decode_back() {
    let documented: Vec<String> = blocks("ringkv-frame")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let expected = worked_frames();
    assert_eq!(
        documented.len(),
        expected.len(),
        "frame blocks in PROTOCOL.md: {documented:?}"
    );
    for (name, frame) in &expected {
        let bytes = frame_bytes(name);
        assert_eq!(
            bytes,
            frame.encode(),
            "block {name} differs from the encoder's bytes"
        );
        let (decoded, used) = protocol::decode(&bytes, Limits::default().max_frame)
            .unwrap_or_else(|e| panic!("block {name} does not decode: {e}"))
            .unwrap_or_else(|| panic!("block {name} is an incomplete frame"));
        assert_eq!(used, bytes.len(), "block {name} has bytes after its frame");
        assert_eq!(&decoded, frame, "block {name} decodes to another frame");
        let expected_kind = if name.ends_with("request") {
            Kind::Request
        } else {
            Kind::Response
        };
        assert_eq!(decoded.kind, expected_kind, "block {name}");
    }
}

/// Reads one whole frame's raw bytes, trusting the length prefix only up to the frame limit.
fn read_raw_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = vec![0u8; protocol::LEN_PREFIX];
    stream
        .read_exact(&mut bytes)
        .expect("no answer from the frontend");
    let total = protocol::frame_len(&bytes, Limits::default().max_frame)
        .expect("the answer's length prefix is not acceptable")
        .expect("four bytes are a length prefix");
    bytes.resize(total, 0);
    stream
        .read_exact(&mut bytes[protocol::LEN_PREFIX..])
        .expect("the answer ended early");
    bytes
}

#[test]
fn worked_answers_are_what_a_frontend_sends() {
    let cluster = LocalCluster::start(
        1,
        BackendConfig::default(),
        FrontendConfig {
            threads: 2,
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let mut stream = TcpStream::connect_timeout(&cluster.frontend_addr(), Duration::from_secs(5))
        .expect("cannot connect to the frontend");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The key must be missing for the GET example: the cluster is fresh and only holds "hello".
    for (request, answer) in [("put-request", "put-answer"), ("get-request", "get-answer")] {
        stream.write_all(&frame_bytes(request)).unwrap();
        assert_eq!(
            read_raw_frame(&mut stream),
            frame_bytes(answer),
            "the frontend's answer to {request} differs from block {answer}"
        );
    }
}

/// Rows of the opcode and status tables: `| `0x01` | `PUT` |`.
fn documented_codes() -> Vec<(u8, String)> {
    let mut rows = Vec::new();
    for line in DOC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let (Some(number), Some(name)) = (
            cells[1]
                .strip_prefix("`0x")
                .and_then(|s| s.strip_suffix('`')),
            cells[2].strip_prefix('`').and_then(|s| s.strip_suffix('`')),
        ) else {
            continue;
        };
        if let Ok(number) = u8::from_str_radix(number, 16) {
            rows.push((number, name.to_string()));
        }
    }
    rows
}

#[test]
fn every_opcode_and_status_is_documented_with_its_number() {
    let rows = documented_codes();
    let known: Vec<(u8, &str)> = Opcode::ALL
        .iter()
        .map(|op| (op.0, op.name().unwrap()))
        .chain(Status::ALL.iter().map(|s| (s.0, s.name().unwrap())))
        .collect();
    for (number, name) in &known {
        assert!(
            rows.iter()
                .any(|(n, doc_name)| n == number && doc_name == name),
            "PROTOCOL.md has no table row \"| `0x{number:02x}` | `{name}` |\""
        );
    }
    for (number, name) in &rows {
        assert!(
            known.iter().any(|(n, k)| n == number && k == name),
            "PROTOCOL.md documents 0x{number:02x} {name}, which the code does not have"
        );
    }
    assert_eq!(rows.len(), known.len(), "a code is documented twice");
}

#[test]
fn payload_examples_are_what_the_encoders_produce() {
    let counters = vec![("keys".to_string(), 1), ("bytes".to_string(), 10)];
    let reports = vec![
        NodeReport {
            addr: "10.0.0.1:4000".into(),
            status: Status::OK,
            message: String::new(),
            counters: counters.clone(),
        },
        NodeReport {
            addr: "total".into(),
            status: Status::OK,
            message: String::new(),
            counters,
        },
    ];
    let bytes = hex_bytes(&block("ringkv-payload", "report-list"));
    assert_eq!(bytes, payload::encode_reports(&reports));
    assert_eq!(payload::decode_reports(&bytes).unwrap(), reports);

    let mut view = View::new(
        1,
        Routing::Successor,
        Placement::Hashed { per_node: 1 },
        2,
        vec!["10.0.0.1:4000".into(), "10.0.0.2:4000".into()],
    );
    view.states[1] = ringkv::NodeState::Down;
    view.since[1] = 5;
    let bytes = hex_bytes(&block("ringkv-payload", "view"));
    assert_eq!(bytes, payload::encode_view(&view));
    assert_eq!(payload::decode_view(1, &bytes).unwrap(), view);
}

#[test]
fn ring_example_follows_the_ownership_rule() {
    // Section 12.2 lists the view in this order.
    let nodes = ["10.0.0.1:4000", "10.0.0.2:4000", "10.0.0.3:4000"];
    let ring = Ring::new(View::new(
        1,
        Routing::Successor,
        Placement::Hashed { per_node: 1 },
        1,
        nodes.iter().map(|s| s.to_string()).collect(),
    ))
    .unwrap();
    let index = |addr: &str| nodes.iter().position(|n| *n == addr).unwrap();
    let body = block("ringkv-ring", "");
    let mut points = Vec::new();
    let mut keys = 0;
    for line in body.lines() {
        let words: Vec<&str> = line
            .split('|')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        match words.as_slice() {
            ["point", hex, addr] => {
                assert_eq!(
                    ring::position_hex(&ring::node_position(addr, 0)),
                    *hex,
                    "{line}"
                );
                points.push((hex.to_string(), index(addr)));
            }
            ["key", hex, key, owner] => {
                let position = ring::key_position(key.as_bytes());
                assert_eq!(ring::position_hex(&position), *hex, "{line}");
                assert_eq!(ring.owner(&position), index(owner), "{line}");
                keys += 1;
            }
            [] => {}
            _ => panic!("unexpected line in the ring example: {line:?}"),
        }
    }
    let sorted: Vec<(String, usize)> = ring
        .points()
        .map(|(p, i)| (ring::position_hex(p), i))
        .collect();
    assert_eq!(
        points, sorted,
        "the example's points are not the sorted ring"
    );
    assert!(keys >= 3, "the example shows too few keys");

    // Section 12.3: a GET of "dog" entering at 10.0.0.2 goes to 10.0.0.1, then to 10.0.0.3.
    let dog = ring::key_position(b"dog");
    let first = ring.next_hop(index("10.0.0.2:4000"), &dog);
    assert_eq!(nodes[first], "10.0.0.1:4000");
    assert_eq!(nodes[ring.next_hop(first, &dog)], "10.0.0.3:4000");
    assert_eq!(nodes[ring.owner(&dog)], "10.0.0.3:4000");
}

#[test]
fn documented_limits_and_constants_are_the_codes() {
    let limits = Limits::default();
    // The servers' flags with their default values give the same limits as the library.
    let flags = ringkv::cli::server_options(1024, limits.max_key, limits.max_value, 10, 300)
        .unwrap()
        .limits;
    assert_eq!(flags, limits);
    for (what, value) in [
        ("max key", limits.max_key),
        ("max value", limits.max_value),
        ("max frame", limits.max_frame),
    ] {
        let text = ringkv::cli::thousands(value as u64);
        assert!(
            DOC.contains(&text),
            "PROTOCOL.md does not mention the {what} of {text} bytes"
        );
    }
    assert!(DOC.contains(&format!("a {MIN_FRAME}-byte frame")));
    let length_without_data = protocol::HEADER_LEN - protocol::LEN_PREFIX + protocol::CRC_LEN;
    assert!(DOC.contains(&format!("= {length_without_data} + K + V")));
    assert!(DOC.contains(&format!("length = {MIN_FRAME} + K + V")));
    assert!(DOC.contains(&format!("the receiver's default ({DEFAULT_HOP_LIMIT})")));
}

/// The fixed-size rows of the header table, `| offset | size | type | ...`, must tile the bytes
/// before the key exactly, and the key must start where the codec puts it.
#[test]
fn header_table_tiles_the_header() {
    let mut fixed = Vec::new();
    let mut key_offset = None;
    for line in DOC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || !cells[0].is_empty() {
            continue;
        }
        match (cells[1].parse::<usize>(), cells[2].parse::<usize>()) {
            (Ok(offset), Ok(size)) => fixed.push((offset, size)),
            (Ok(offset), Err(_)) if cells[2] == "K" => key_offset = Some(offset),
            _ => {}
        }
    }
    let mut next = 0;
    for (offset, size) in &fixed {
        assert_eq!(*offset, next, "header table rows are not contiguous");
        next = offset + size;
    }
    assert_eq!(next, protocol::HEADER_LEN);
    assert_eq!(key_offset, Some(protocol::HEADER_LEN));
}

#[test]
fn chain_example_follows_the_chain_rule() {
    // Section 12.4: the view of section 12.2 with two copies per key, then with 10.0.0.1 down.
    let nodes = ["10.0.0.1:4000", "10.0.0.2:4000", "10.0.0.3:4000"];
    let mut view = View::new(
        1,
        Routing::Successor,
        Placement::Hashed { per_node: 1 },
        2,
        nodes.iter().map(|s| s.to_string()).collect(),
    );
    let chain = |view: &View, key: &str| -> String {
        let ring = Ring::new(view.clone()).unwrap();
        ring.chain_of_key(key.as_bytes())
            .members()
            .map(|n| format!("`{}`", ring.node(n).trim_end_matches(":4000")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    // The page's words with its line breaks undone.
    let text = spec.split_whitespace().collect::<Vec<_>>().join(" ");
    let stated = [
        ("foo", "`foo` (owner `10.0.0.2`) has the chain "),
        ("bar", "`bar` (owner `10.0.0.1`) has "),
        ("dog", "`dog` (owner `10.0.0.3`) wraps round to "),
    ];
    for (key, words) in stated {
        let sentence = format!("{words}{}", chain(&view, key));
        assert!(
            text.contains(&sentence),
            "PROTOCOL.md should say: {sentence}"
        );
    }
    view.states[0] = ringkv::NodeState::Down;
    let sentence = format!(
        "With `10.0.0.1` down, `foo`'s chain is {} alone and `bar`'s {} alone.",
        chain(&view, "foo"),
        chain(&view, "bar")
    );
    assert!(
        text.contains(&sentence),
        "PROTOCOL.md should say: {sentence}"
    );
}
