//! Wire codec throughput: encoding and decoding PUT frames with a 16-byte key and a 32-byte or
//! 4 KiB value, beside a plain copy of the same number of bytes, which is the most a codec that
//! must touch every byte could hope for.
//!
//! Throughput counts the frame's bytes on the wire (header, key, value and CRC).

mod common;

use std::hint::black_box;

use common::{mb_per_s, print_header, run_threads, Pick, Plan};
use ringkv::protocol::{self, Frame, Opcode};

/// Frames handled per timed step, so that checking the clock costs nothing next to the work.
const BATCH: u64 = 64;

fn main() {
    let plan = Plan::from_env(Pick::Best);
    print_header("codec (ringkv::protocol encode_into / decode)", &plan);
    for (label, value_len) in [("32B", 32), ("4KiB", 4096)] {
        bench_size(&plan, label, value_len);
    }
}

fn bench_size(plan: &Plan, label: &str, value_len: usize) {
    let key = b"key-000000000042".to_vec();
    let value: Vec<u8> = (0..value_len).map(|i| (i % 251) as u8).collect();
    let frame = Frame::request(Opcode::PUT, 42, key, value);
    let wire = frame.encode();
    let wire_len = wire.len();
    let (decoded, used) = protocol::decode(&wire, usize::MAX)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert!(
        used == wire_len && decoded == frame,
        "decode(encode(frame)) is not the frame"
    );

    let encode = plan.measure(|| {
        run_threads(
            vec![Vec::with_capacity(wire_len)],
            plan.run_time,
            |out: &mut Vec<u8>| {
                for _ in 0..BATCH {
                    out.clear();
                    black_box(&frame).encode_into(out);
                    black_box(&*out);
                }
                BATCH
            },
        )
    });
    assert_eq!(encode.states[0], wire, "encode_into produced other bytes");

    let decode = plan.measure(|| {
        run_threads(vec![()], plan.run_time, |_| {
            for _ in 0..BATCH {
                let decoded = protocol::decode(black_box(&wire), usize::MAX);
                black_box(decoded.expect("a valid frame decodes"));
            }
            BATCH
        })
    });

    let memcpy = plan.measure(|| {
        run_threads(vec![vec![0u8; wire_len]], plan.run_time, |dst| {
            for _ in 0..BATCH {
                dst.copy_from_slice(black_box(&wire));
                black_box(&mut *dst);
            }
            BATCH
        })
    });
    assert_eq!(memcpy.states[0], wire, "the copy is not the frame");

    let memcpy_mb = mb_per_s(wire_len, memcpy.rate());
    println!("frame_{label}_bytes: {wire_len} B");
    println!("memcpy_{label}: {memcpy_mb:.1} MB/s");
    for (name, run) in [("encode", encode.rate()), ("decode", decode.rate())] {
        let mb = mb_per_s(wire_len, run);
        println!("{name}_{label}: {mb:.1} MB/s");
        println!("{name}_{label}_frames: {:.2} M frames/s", run / 1e6);
        println!("{name}_{label}_vs_memcpy: {:.3} x", mb / memcpy_mb);
    }
}
