use super::*;

fn sample() -> Frame {
    Frame {
        kind: Kind::Request,
        opcode: Opcode::PUT,
        status: Status::OK,
        hops: 3,
        hop_limit: 9,
        request_id: 0x0102_0304_0506_0708,
        epoch: 42,
        key: b"key".to_vec(),
        value: b"value".to_vec(),
    }
}

const LIMIT: usize = 1 << 20;

#[test]
fn round_trips_every_field() {
    let frames = [
        sample(),
        Frame::request(Opcode::GET, 1, b"k".to_vec(), Vec::new()),
        Frame::request(Opcode::PING, u64::MAX, Vec::new(), Vec::new()),
        sample().reply(Status::NOT_FOUND, Vec::new()),
        sample().error_reply(Status::LOOP, "too many relays"),
        Frame::request(Opcode(0xee), 5, vec![0, 255, 7], vec![9; 70_000]),
    ];
    for frame in frames {
        let bytes = frame.encode();
        assert_eq!(bytes.len(), frame.encoded_len());
        let (decoded, used) = decode(&bytes, LIMIT).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn a_borrowed_frame_with_a_value_head_encodes_as_the_whole_value_would() {
    let whole = sample();
    let (head, rest) = whole.value.split_at(2);
    let borrowed = FrameRef {
        value_head: head,
        value: rest,
        ..whole.borrowed()
    };
    assert_eq!(borrowed.encoded_len(), whole.encoded_len());
    let mut bytes = Vec::new();
    borrowed.encode_into_with_id(77, &mut bytes);
    let mut expected = Vec::new();
    whole.encode_into_with_id(77, &mut expected);
    assert_eq!(bytes, expected);
    assert_eq!(borrowed.to_frame(), whole);
}

#[test]
fn layout_matches_the_documented_offsets() {
    let bytes = sample().encode();
    assert_eq!(&bytes[0..4], &(bytes.len() as u32 - 4).to_be_bytes());
    assert_eq!(&bytes[4..6], b"RK");
    assert_eq!(bytes[6], VERSION);
    assert_eq!(bytes[7], 0);
    assert_eq!(bytes[8], Opcode::PUT.0);
    assert_eq!(&bytes[10..12], &3u16.to_be_bytes());
    assert_eq!(&bytes[12..14], &9u16.to_be_bytes());
    assert_eq!(&bytes[14..22], &0x0102_0304_0506_0708u64.to_be_bytes());
    assert_eq!(&bytes[22..30], &42u64.to_be_bytes());
    assert_eq!(&bytes[30..34], &3u32.to_be_bytes());
    assert_eq!(&bytes[34..38], &5u32.to_be_bytes());
    assert_eq!(&bytes[38..41], b"key");
    assert_eq!(&bytes[41..46], b"value");
    let crc = crc32fast::hash(&bytes[..46]);
    assert_eq!(&bytes[46..50], &crc.to_be_bytes());
}

#[test]
fn every_prefix_needs_more_bytes() {
    let bytes = sample().encode();
    for cut in 0..bytes.len() {
        assert_eq!(decode(&bytes[..cut], LIMIT), Ok(None), "cut at {cut}");
    }
}

#[test]
fn back_to_back_frames_decode_one_at_a_time() {
    let mut bytes = sample().encode();
    let second = Frame::request(Opcode::GET, 2, b"other".to_vec(), Vec::new());
    second.encode_into(&mut bytes);
    let (first, used) = decode(&bytes, LIMIT).unwrap().unwrap();
    assert_eq!(first, sample());
    let (next, used2) = decode(&bytes[used..], LIMIT).unwrap().unwrap();
    assert_eq!(next, second);
    assert_eq!(used + used2, bytes.len());
}

#[test]
fn length_over_the_limit_is_refused_from_the_prefix_alone() {
    let mut bytes = sample().encode();
    bytes[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode(&bytes[..4], LIMIT),
        Err(FrameError::TooLarge { .. })
    ));
    let exact = sample().encoded_len();
    assert!(decode(&sample().encode(), exact).unwrap().is_some());
    assert!(matches!(
        decode(&sample().encode(), exact - 1),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn length_too_short_for_a_header() {
    for len in [0u32, 1, (MIN_FRAME - LEN_PREFIX - 1) as u32] {
        let bytes = len.to_be_bytes();
        assert!(matches!(
            decode(&bytes, LIMIT),
            Err(FrameError::TooShort { .. })
        ));
    }
}

#[test]
fn bad_magic_version_and_kind_are_refused_early() {
    let good = sample().encode();
    let mut bad = good.clone();
    bad[4] = b'X';
    assert!(matches!(
        decode(&bad[..6], LIMIT),
        Err(FrameError::BadMagic { .. })
    ));
    let mut bad = good.clone();
    bad[6] = 2;
    assert!(matches!(
        decode(&bad[..7], LIMIT),
        Err(FrameError::BadVersion { found: 2 })
    ));
    let mut bad = good;
    bad[7] = 7;
    assert!(matches!(
        decode(&bad[..8], LIMIT),
        Err(FrameError::BadKind { found: 7 })
    ));
}

#[test]
fn inconsistent_lengths_are_refused() {
    let mut bytes = sample().encode();
    // Claim a longer key than the body holds.
    bytes[30..34].copy_from_slice(&100u32.to_be_bytes());
    assert!(matches!(
        decode(&bytes, LIMIT),
        Err(FrameError::LengthMismatch { .. })
    ));
    // Key and value lengths whose sum overflows u32 are still just a mismatch.
    let mut bytes = sample().encode();
    bytes[30..34].copy_from_slice(&u32::MAX.to_be_bytes());
    bytes[34..38].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode(&bytes, LIMIT),
        Err(FrameError::LengthMismatch { .. })
    ));
}

#[test]
fn any_flipped_bit_is_caught() {
    let good = sample().encode();
    for byte in 4..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            match decode(&bad, LIMIT) {
                Err(_) => {}
                Ok(other) => panic!("flip of bit {bit} in byte {byte} decoded: {other:?}"),
            }
        }
    }
}

#[test]
fn unknown_opcodes_and_statuses_decode() {
    let mut frame = sample();
    frame.opcode = Opcode(0x7f);
    frame.status = Status(0x99);
    let (decoded, _) = decode(&frame.encode(), LIMIT).unwrap().unwrap();
    assert_eq!(decoded.opcode, Opcode(0x7f));
    assert_eq!(decoded.opcode.name(), None);
    assert_eq!(decoded.status.to_string(), "Status(0x99)");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = crate::rng::Rng::seeded(1);
    let good = sample().encode();
    for _ in 0..20_000 {
        let len = rng.below(80) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half the time start from a plausible header so the later checks are reached.
        if rng.below(2) == 0 && len >= 8 {
            bytes[..8].copy_from_slice(&good[..8]);
        }
        let _ = decode(&bytes, LIMIT);
        let _ = frame_len(&bytes, LIMIT);
        let _ = peek_request_id(&bytes);
    }
}

#[test]
fn request_id_is_read_from_a_partial_header() {
    let bytes = sample().encode();
    assert_eq!(peek_request_id(&bytes[..22]), 0x0102_0304_0506_0708);
    assert_eq!(peek_request_id(&bytes[..21]), 0);
}

#[test]
fn limits_refuse_long_keys_and_values() {
    let limits = Limits {
        max_key: 4,
        max_value: 8,
        max_frame: LIMIT,
    };
    assert!(limits.check(&sample()).is_ok());
    let mut long_key = sample();
    long_key.key = b"12345".to_vec();
    assert!(limits.check(&long_key).is_err());
    let mut long_value = sample();
    long_value.value = vec![0; 9];
    assert!(limits.check(&long_value).is_err());
}

#[test]
fn crc32_is_the_standard_crc_whichever_hasher_it_copies() {
    // The check value of CRC-32/ISO-HDLC (PROTOCOL.md, section 4).
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    for len in [0usize, 1, 15, 16, 63, 64, 65, 1000] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(crc32(&bytes), crc32fast::hash(&bytes), "{len} bytes");
        let mut hasher = crc32_hasher();
        let (a, b) = bytes.split_at(len / 2);
        hasher.update(a);
        hasher.update(b);
        assert_eq!(
            hasher.finalize(),
            crc32fast::hash(&bytes),
            "{len} bytes in two"
        );
    }
}
