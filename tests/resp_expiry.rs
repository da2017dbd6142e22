//! Time to live through the Redis-protocol door: SET's EX, PX, EXAT, PXAT and KEEPTTL, SETEX,
//! PSETEX, the EXPIRE family with NX, XX, GT and LT, TTL, PTTL, EXPIRETIME, PEXPIRETIME and
//! PERSIST, answered as redis-server 7 answers them, over a raw socket and through redis-cli.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{run_bounded, Finished};
use common::resp::{bulk, ok, Conn, Resp};
use common::{client, retry};
use ringkv::protocol::{Frame, Opcode, Status};
use ringkv::update::{decode_ttl, TimeToLive, Update};
use ringkv::{BackendConfig, FrontendConfig, LocalCluster};

fn int(n: i64) -> Resp {
    Resp::Int(n)
}

fn error(text: &str) -> Resp {
    Resp::Error(text.into())
}

/// Three backends (so every key has a chain) behind a frontend with the RESP door open.
fn cluster() -> LocalCluster {
    LocalCluster::start(
        3,
        BackendConfig::default(),
        FrontendConfig {
            threads: 8,
            startup_timeout: Duration::from_secs(5),
            resp_listen: Some("127.0.0.1:0".into()),
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

fn resp_addr(cluster: &LocalCluster) -> SocketAddr {
    cluster.resp_addr().expect("the RESP door is open")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// How far apart the test's clocks (monotonic and wall) and the server's may read: they are the
/// same machine's, so only a clock step would move them further.
const SKEW: Duration = Duration::from_millis(20);

/// Polls `key` from `set_sent` (just before the command that gave it `ttl`) and `set_answered`
/// (just after its reply) until it reads as absent, within 5 s: while it is there no more than
/// `ttl` may have passed since the reply, and once it is gone at least `ttl` since the request.
fn assert_lives_for(
    conn: &mut Conn,
    key: &str,
    ttl: Duration,
    set_sent: Instant,
    set_answered: Instant,
) {
    retry(Duration::from_secs(5), &format!("{key} to expire"), || {
        let asked = Instant::now();
        match conn.cmd(&["GET", key]) {
            Resp::Bulk(_) => {
                let lived = asked - set_answered;
                assert!(
                    lived < ttl + SKEW,
                    "{key} still there {lived:?} after a {ttl:?} TTL"
                );
                None
            }
            Resp::Nil => {
                let lived = set_sent.elapsed();
                assert!(
                    lived + SKEW >= ttl,
                    "{key} gone after {lived:?}, before its {ttl:?}"
                );
                Some(())
            }
            other => panic!("GET {key} answered {other:?}"),
        }
    });
    assert_eq!(conn.int(&["TTL", key]), -2);
    assert_eq!(conn.int(&["PTTL", key]), -2);
    assert_eq!(conn.int(&["EXISTS", key]), 0);
}

#[test]
fn set_with_ex_and_px_reads_back_its_time_and_expires() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let before = now_ms();
    assert_eq!(conn.cmd(&["SET", "ex", "v", "EX", "100"]), ok());
    let after = now_ms();
    let ttl = conn.int(&["TTL", "ex"]);
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let pttl = conn.int(&["PTTL", "ex"]);
    assert!((95_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let at = conn.int(&["PEXPIRETIME", "ex"]);
    assert!(
        (before + 100_000..=after + 100_000).contains(&at),
        "PEXPIRETIME {at}, set between {before} and {after}"
    );
    assert_eq!(conn.int(&["EXPIRETIME", "ex"]), (at + 500) / 1000);
    assert_eq!(conn.cmd(&["GET", "ex"]), bulk(b"v"));

    // Lower-case options, and a short life watched to its end.
    let sent = Instant::now();
    assert_eq!(conn.cmd(&["set", "px", "v", "px", "200"]), ok());
    let answered = Instant::now();
    let pttl = conn.int(&["PTTL", "px"]);
    assert!(pttl <= 200, "PTTL {pttl}");
    assert_lives_for(&mut conn, "px", Duration::from_millis(200), sent, answered);
    assert_eq!(conn.int(&["EXPIRETIME", "px"]), -2);
    assert_eq!(conn.int(&["PEXPIRETIME", "px"]), -2);

    // The binary door reads the same key as gone, and sees the other's time to live.
    let mut native = client(cluster.frontend_addr());
    assert_eq!(native.get(b"px").unwrap(), None);
    let answer = native
        .raw_call(&Frame::request(
            Opcode::UPDATE,
            1,
            b"ex".to_vec(),
            Update::Ttl.encode(),
        ))
        .unwrap();
    assert_eq!(answer.status, Status::OK, "{answer:?}");
    match decode_ttl(&answer.value).unwrap() {
        TimeToLive::Left { at: native_at, .. } => assert_eq!(native_at as i64, at),
        other => panic!("the binary door's TTL of ex: {other:?}"),
    }
}

#[test]
fn exat_and_pxat_set_the_unix_time_and_a_past_one_leaves_nothing() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let in_an_hour_s = now_ms() / 1000 + 3600;
    let at = in_an_hour_s.to_string();
    assert_eq!(conn.cmd(&["SET", "exat", "v", "EXAT", &at]), ok());
    assert_eq!(conn.int(&["EXPIRETIME", "exat"]), in_an_hour_s);
    assert_eq!(conn.int(&["PEXPIRETIME", "exat"]), in_an_hour_s * 1000);
    let in_an_hour_ms = now_ms() + 3_600_000 + 7;
    let at = in_an_hour_ms.to_string();
    assert_eq!(conn.cmd(&["SET", "pxat", "v", "pxat", &at]), ok());
    assert_eq!(conn.int(&["PEXPIRETIME", "pxat"]), in_an_hour_ms);
    let ttl = conn.int(&["TTL", "pxat"]);
    assert!((3590..=3600).contains(&ttl), "TTL {ttl}");

    // The farthest time there is, as Redis takes it.
    let max = i64::MAX.to_string();
    assert_eq!(conn.cmd(&["SET", "far", "v", "PXAT", &max]), ok());
    assert_eq!(conn.int(&["PEXPIRETIME", "far"]), i64::MAX);

    // A time already past stores nothing, and removes what was there.
    assert_eq!(conn.cmd(&["SET", "past", "old"]), ok());
    assert_eq!(conn.cmd(&["SET", "past", "v", "EXAT", "1"]), ok());
    assert_eq!(conn.cmd(&["GET", "past"]), Resp::Nil);
    assert_eq!(conn.int(&["TTL", "past"]), -2);
    assert_eq!(conn.cmd(&["SET", "never", "v", "PXAT", "1"]), ok());
    assert_eq!(conn.int(&["EXISTS", "never"]), 0);

    let sent = Instant::now();
    let soon = (now_ms() + 250).to_string();
    assert_eq!(conn.cmd(&["SET", "soon", "v", "PXAT", &soon]), ok());
    let answered = Instant::now();
    assert_lives_for(
        &mut conn,
        "soon",
        Duration::from_millis(250),
        sent,
        answered,
    );
}

#[test]
fn keepttl_keeps_the_time_and_other_writes_keep_or_clear_it_as_redis_does() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.cmd(&["SET", "k", "v1", "EX", "100"]), ok());
    let at = conn.int(&["PEXPIRETIME", "k"]);
    assert_eq!(conn.cmd(&["SET", "k", "v2", "KEEPTTL"]), ok());
    assert_eq!(conn.cmd(&["GET", "k"]), bulk(b"v2"));
    assert_eq!(conn.int(&["PEXPIRETIME", "k"]), at);
    assert_eq!(conn.cmd(&["SET", "k", "v3"]), ok());
    assert_eq!(conn.int(&["TTL", "k"]), -1);
    assert_eq!(conn.int(&["PTTL", "k"]), -1);
    assert_eq!(conn.int(&["EXPIRETIME", "k"]), -1);
    assert_eq!(conn.int(&["PEXPIRETIME", "k"]), -1);
    // KEEPTTL on a key that has none, or on an absent one, leaves it without.
    assert_eq!(conn.cmd(&["SET", "k", "v4", "keepttl"]), ok());
    assert_eq!(conn.int(&["TTL", "k"]), -1);
    assert_eq!(conn.cmd(&["SET", "fresh", "v", "KEEPTTL"]), ok());
    assert_eq!(conn.int(&["TTL", "fresh"]), -1);

    // INCR and APPEND keep it; SET XX, GETSET and MSET clear it.
    assert_eq!(conn.cmd(&["SET", "n", "5", "EX", "100"]), ok());
    let at = conn.int(&["PEXPIRETIME", "n"]);
    assert_eq!(conn.cmd(&["INCR", "n"]), int(6));
    assert_eq!(conn.cmd(&["INCRBY", "n", "4"]), int(10));
    assert_eq!(conn.int(&["PEXPIRETIME", "n"]), at);
    assert_eq!(conn.cmd(&["APPEND", "n", "0"]), int(3));
    assert_eq!(conn.int(&["PEXPIRETIME", "n"]), at);
    assert_eq!(conn.cmd(&["GET", "n"]), bulk(b"100"));
    assert_eq!(conn.cmd(&["SET", "n", "1", "XX"]), ok());
    assert_eq!(conn.int(&["TTL", "n"]), -1);
    assert_eq!(conn.cmd(&["SET", "n", "1", "EX", "100"]), ok());
    assert_eq!(conn.cmd(&["GETSET", "n", "2"]), bulk(b"1"));
    assert_eq!(conn.int(&["TTL", "n"]), -1);
    assert_eq!(conn.cmd(&["SET", "n", "1", "EX", "100"]), ok());
    assert_eq!(conn.cmd(&["MSET", "n", "3"]), ok());
    assert_eq!(conn.int(&["TTL", "n"]), -1);
}

#[test]
fn nx_xx_and_get_combine_with_a_time_to_live() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.cmd(&["SET", "a", "v", "NX", "EX", "100"]), ok());
    assert!(conn.int(&["TTL", "a"]) > 0);
    assert_eq!(conn.cmd(&["SET", "a", "w", "EX", "5", "NX"]), Resp::Nil);
    assert_eq!(conn.cmd(&["GET", "a"]), bulk(b"v"));
    assert!(
        conn.int(&["TTL", "a"]) > 50,
        "a failed NX kept the first time"
    );
    assert_eq!(
        conn.cmd(&["SET", "absent", "v", "XX", "EX", "10"]),
        Resp::Nil
    );
    assert_eq!(conn.int(&["EXISTS", "absent"]), 0);

    // GET answers what the key held, whether or not the value is stored (Redis 7 allows NX).
    assert_eq!(conn.cmd(&["SET", "a", "x", "GET", "EX", "100"]), bulk(b"v"));
    assert_eq!(conn.cmd(&["SET", "a", "y", "NX", "GET"]), bulk(b"x"));
    assert_eq!(conn.cmd(&["GET", "a"]), bulk(b"x"));
    assert_eq!(
        conn.cmd(&["SET", "b", "y", "nx", "get", "px", "100000"]),
        Resp::Nil
    );
    assert_eq!(conn.cmd(&["GET", "b"]), bulk(b"y"));
    assert!(conn.int(&["PTTL", "b"]) > 0);
    assert_eq!(conn.cmd(&["SET", "c", "z", "XX", "GET"]), Resp::Nil);
    assert_eq!(conn.int(&["EXISTS", "c"]), 0);
    // Repeated options are allowed; the last time wins.
    assert_eq!(
        conn.cmd(&["SET", "r", "v", "EX", "10", "EX", "1000", "NX", "NX"]),
        ok()
    );
    assert!(conn.int(&["TTL", "r"]) > 900);
    assert_eq!(
        conn.cmd(&["SET", "r", "v", "KEEPTTL", "KEEPTTL", "GET", "GET"]),
        bulk(b"v")
    );
    assert!(conn.int(&["TTL", "r"]) > 900);

    let sent = Instant::now();
    assert_eq!(conn.cmd(&["SET", "a", "w", "XX", "PX", "300"]), ok());
    let answered = Instant::now();
    assert_lives_for(&mut conn, "a", Duration::from_millis(300), sent, answered);
}

#[test]
fn setex_and_psetex_store_with_a_time_to_live() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.cmd(&["SET", "s", "old"]), ok());
    assert_eq!(conn.cmd(&["SETEX", "s", "100", "new"]), ok());
    assert_eq!(conn.cmd(&["GET", "s"]), bulk(b"new"));
    let ttl = conn.int(&["TTL", "s"]);
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let sent = Instant::now();
    assert_eq!(conn.cmd(&["psetex", "p", "200", "v"]), ok());
    let answered = Instant::now();
    let pttl = conn.int(&["PTTL", "p"]);
    assert!(pttl <= 200, "PTTL {pttl}");
    assert_lives_for(&mut conn, "p", Duration::from_millis(200), sent, answered);
}

#[test]
fn expire_and_its_options_follow_redis() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.int(&["EXPIRE", "absent", "100"]), 0);
    assert_eq!(conn.int(&["PEXPIRE", "absent", "100", "LT"]), 0);
    assert_eq!(conn.int(&["EXISTS", "absent"]), 0);

    assert_eq!(conn.cmd(&["SET", "k", "v"]), ok());
    // Without a time to live: XX, GT and XX LT leave it; NX and LT set it.
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "XX"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "GT"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "XX", "GT"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "XX", "LT"]), 0);
    assert_eq!(conn.int(&["TTL", "k"]), -1);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "LT"]), 1);
    assert!((99..=100).contains(&conn.int(&["TTL", "k"])));
    assert_eq!(conn.int(&["PERSIST", "k"]), 1);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "nx"]), 1);
    // With one: NX leaves it; XX, GT (later) and LT (sooner) move it.
    assert_eq!(conn.int(&["EXPIRE", "k", "50", "NX"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "200", "XX"]), 1);
    assert!(conn.int(&["TTL", "k"]) > 190);
    assert_eq!(conn.int(&["EXPIRE", "k", "100", "GT"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "300", "gt"]), 1);
    assert_eq!(conn.int(&["EXPIRE", "k", "400", "LT"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "400", "XX", "GT"]), 1);
    assert_eq!(conn.int(&["EXPIRE", "k", "500", "XX", "LT"]), 0);
    assert_eq!(conn.int(&["EXPIRE", "k", "250", "XX", "LT"]), 1);
    let ttl = conn.int(&["TTL", "k"]);
    assert!((249..=250).contains(&ttl), "TTL {ttl}");
    assert_eq!(conn.int(&["PEXPIRE", "k", "120000", "LT", "LT"]), 1);
    let pttl = conn.int(&["PTTL", "k"]);
    assert!((110_000..=120_000).contains(&pttl), "PTTL {pttl}");

    let in_an_hour_s = now_ms() / 1000 + 3600;
    assert_eq!(conn.int(&["EXPIREAT", "k", &in_an_hour_s.to_string()]), 1);
    assert_eq!(conn.int(&["EXPIRETIME", "k"]), in_an_hour_s);
    let in_two_hours_ms = now_ms() + 7_200_000 + 3;
    let at = in_two_hours_ms.to_string();
    assert_eq!(conn.int(&["PEXPIREAT", "k", &at, "LT"]), 0);
    assert_eq!(conn.int(&["PEXPIREAT", "k", &at, "GT"]), 1);
    assert_eq!(conn.int(&["PEXPIRETIME", "k"]), in_two_hours_ms);
    assert_eq!(conn.int(&["EXPIREAT", "k", "9223372036854775"]), 1);
    assert_eq!(conn.int(&["PEXPIRETIME", "k"]), 9_223_372_036_854_775_000);
    assert_eq!(conn.int(&["EXPIRETIME", "k"]), 9_223_372_036_854_775);

    // PERSIST takes it away once; a key without one, or an absent key, answers 0.
    assert_eq!(conn.int(&["PERSIST", "k"]), 1);
    assert_eq!(conn.int(&["TTL", "k"]), -1);
    assert_eq!(conn.int(&["PERSIST", "k"]), 0);
    assert_eq!(conn.int(&["PERSIST", "absent"]), 0);
    assert_eq!(conn.cmd(&["GET", "k"]), bulk(b"v"));

    // A time not after now deletes the key and answers 1.
    for (i, args) in [
        &["EXPIRE", "0"][..],
        &["EXPIRE", "-5"],
        &["PEXPIRE", "-1"],
        &["EXPIREAT", "1"],
        &["PEXPIREAT", "-9223372036854775808"],
        &["EXPIRE", "-9223372036854775"],
    ]
    .iter()
    .enumerate()
    {
        let key = format!("doomed{i}");
        assert_eq!(conn.cmd(&["SET", &key, "v"]), ok());
        assert_eq!(conn.int(&[args[0], &key, args[1]]), 1, "{args:?}");
        assert_eq!(conn.cmd(&["GET", &key]), Resp::Nil, "{args:?}");
        assert_eq!(conn.int(&["TTL", &key]), -2, "{args:?}");
    }
    // LT with a past time deletes a key without a time to live, as Redis's does.
    assert_eq!(conn.cmd(&["SET", "lt", "v"]), ok());
    assert_eq!(conn.int(&["EXPIRE", "lt", "-1", "LT"]), 1);
    assert_eq!(conn.int(&["EXISTS", "lt"]), 0);

    let sent = Instant::now();
    assert_eq!(conn.cmd(&["SET", "short", "v"]), ok());
    assert_eq!(conn.int(&["PEXPIRE", "short", "200"]), 1);
    let answered = Instant::now();
    assert_lives_for(
        &mut conn,
        "short",
        Duration::from_millis(200),
        sent,
        answered,
    );
}

#[test]
fn bad_times_and_options_get_redis_errors_and_change_nothing() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.cmd(&["SET", "k", "orig"]), ok());
    let syntax = "ERR syntax error";
    let not_integer = "ERR value is not an integer or out of range";
    let invalid = |command: &str| format!("ERR invalid expire time in '{command}' command");
    let nx_and = "ERR NX and XX, GT or LT options at the same time are not compatible";
    let gt_and_lt = "ERR GT and LT options at the same time are not compatible";
    let cases: Vec<(&[&str], String)> = vec![
        (&["SET", "k", "new", "EX", "10", "PX", "20"], syntax.into()),
        (&["SET", "k", "new", "EX", "10", "KEEPTTL"], syntax.into()),
        (&["SET", "k", "new", "KEEPTTL", "PXAT", "10"], syntax.into()),
        (
            &["SET", "k", "new", "EXAT", "10", "EX", "10"],
            syntax.into(),
        ),
        (&["SET", "k", "new", "NX", "XX"], syntax.into()),
        (&["SET", "k", "new", "XX", "NX"], syntax.into()),
        (&["SET", "k", "new", "EX"], syntax.into()),
        (&["SET", "k", "new", "NX", "PX"], syntax.into()),
        (&["SET", "k", "new", "EX", "abc", "NOPE"], syntax.into()),
        (&["SET", "k", "new", "PERSIST"], syntax.into()),
        (&["SET", "k", "new", "EX", "abc"], not_integer.into()),
        (&["SET", "k", "new", "PX", "1.5"], not_integer.into()),
        (&["SET", "k", "new", "EX", "010"], not_integer.into()),
        // EX takes the next argument as its time, whatever it is.
        (&["SET", "k", "new", "EX", "NX"], not_integer.into()),
        (&["SET", "k", "new", "EX", "0"], invalid("set")),
        (&["SET", "k", "new", "PX", "-1"], invalid("set")),
        (&["SET", "k", "new", "EXAT", "0"], invalid("set")),
        (&["SET", "k", "new", "PXAT", "-5", "GET"], invalid("set")),
        // Seconds past what i64 milliseconds hold, or past it once now is added.
        (
            &["SET", "k", "new", "EX", "9223372036854776"],
            invalid("set"),
        ),
        (
            &["SET", "k", "new", "EX", "9223372036854775"],
            invalid("set"),
        ),
        (
            &["SET", "k", "new", "PX", "9223372036854775807"],
            invalid("set"),
        ),
        (
            &["SET", "k", "new", "EXAT", "9223372036854776"],
            invalid("set"),
        ),
        (&["SETEX", "k", "0", "new"], invalid("setex")),
        (&["SETEX", "k", "abc", "new"], not_integer.into()),
        (&["SETEX", "k", "9223372036854776", "new"], invalid("setex")),
        (&["PSETEX", "k", "-5", "new"], invalid("psetex")),
        (
            &["PSETEX", "k", "9223372036854775807", "new"],
            invalid("psetex"),
        ),
        (&["EXPIRE", "k", "10", "NX", "XX"], nx_and.into()),
        (&["EXPIRE", "k", "10", "GT", "NX"], nx_and.into()),
        (&["PEXPIRE", "k", "10", "NX", "LT"], nx_and.into()),
        (&["EXPIRE", "k", "10", "GT", "LT"], gt_and_lt.into()),
        (&["EXPIREAT", "k", "10", "XX", "lt", "gt"], gt_and_lt.into()),
        (
            &["EXPIRE", "k", "10", "FOO"],
            "ERR Unsupported option FOO".into(),
        ),
        // Options are read before the time.
        (
            &["EXPIRE", "k", "abc", "foo"],
            "ERR Unsupported option foo".into(),
        ),
        (
            &["EXPIRE", "absent", "10", "bogus"],
            "ERR Unsupported option bogus".into(),
        ),
        (&["EXPIRE", "k", "abc"], not_integer.into()),
        (&["PEXPIREAT", "k", "1e3"], not_integer.into()),
        (&["EXPIRE", "k", "9223372036854776"], invalid("expire")),
        (&["EXPIRE", "k", "-9223372036854776"], invalid("expire")),
        (&["EXPIRE", "k", "9223372036854775"], invalid("expire")),
        (&["PEXPIRE", "k", "9223372036854775807"], invalid("pexpire")),
        (&["EXPIREAT", "k", "9223372036854776"], invalid("expireat")),
        (
            &["SETEX", "k", "10"],
            "ERR wrong number of arguments for 'setex' command".into(),
        ),
        (
            &["PSETEX", "k", "10", "v", "x"],
            "ERR wrong number of arguments for 'psetex' command".into(),
        ),
        (
            &["EXPIRE", "k"],
            "ERR wrong number of arguments for 'expire' command".into(),
        ),
        (
            &["TTL", "k", "x"],
            "ERR wrong number of arguments for 'ttl' command".into(),
        ),
        (
            &["PERSIST"],
            "ERR wrong number of arguments for 'persist' command".into(),
        ),
        (
            &["PEXPIRETIME"],
            "ERR wrong number of arguments for 'pexpiretime' command".into(),
        ),
        // GETEX would need a read and an expiry in one step, which UPDATE does not have.
        (
            &["GETEX", "k", "EX", "10"],
            "ERR unknown command 'GETEX', with args beginning with: 'k' 'EX' '10' ".into(),
        ),
    ];
    for (args, expected) in &cases {
        assert_eq!(conn.cmd(args), error(expected), "{args:?}");
    }
    assert_eq!(conn.cmd(&["GET", "k"]), bulk(b"orig"));
    assert_eq!(conn.int(&["TTL", "k"]), -1);
    assert_eq!(conn.cmd(&["PING"]), Resp::Simple("PONG".into()));

    // The same errors come back to an inline request, and a pipeline is answered in order.
    conn.send(b"SET k new EX 0\r\nSET k new EX 100\r\nTTL k\r\n");
    assert_eq!(conn.reply(), error(&invalid("set")));
    assert_eq!(conn.reply(), ok());
    assert!(matches!(conn.reply(), Resp::Int(99..=100)));
}

#[test]
fn command_lists_the_time_to_live_commands() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let names = match conn.cmd(&["COMMAND", "LIST"]) {
        Resp::Array(names) => names,
        other => panic!("COMMAND LIST answered {other:?}"),
    };
    assert_eq!(conn.int(&["COMMAND", "COUNT"]), names.len() as i64);
    let expected = [
        ("setex", 4, &["write", "denyoom"][..]),
        ("psetex", 4, &["write", "denyoom"]),
        ("expire", -3, &["write", "fast"]),
        ("pexpire", -3, &["write", "fast"]),
        ("expireat", -3, &["write", "fast"]),
        ("pexpireat", -3, &["write", "fast"]),
        ("ttl", 2, &["readonly", "fast"]),
        ("pttl", 2, &["readonly", "fast"]),
        ("expiretime", 2, &["readonly", "fast"]),
        ("pexpiretime", 2, &["readonly", "fast"]),
        ("persist", 2, &["write", "fast"]),
    ];
    for (name, arity, flags) in expected {
        assert!(
            names.contains(&bulk(name.as_bytes())),
            "{name} in {names:?}"
        );
        let flags = flags.iter().map(|f| Resp::Simple(f.to_string())).collect();
        assert_eq!(
            conn.cmd(&["COMMAND", "INFO", name]),
            Resp::Array(vec![Resp::Array(vec![
                bulk(name.as_bytes()),
                int(arity),
                Resp::Array(flags),
                int(1),
                int(1),
                int(1),
            ])]),
            "{name}"
        );
    }
    assert!(!names.contains(&bulk(b"getex")));
    assert_eq!(
        conn.cmd(&["COMMAND", "INFO", "getex"]),
        Resp::Array(vec![Resp::NilArray])
    );
}

/// Whether redis-cli can be run. Missing, it fails the test when RINGKV_REQUIRE_REDIS_TOOLS=1
/// (CI installs it); otherwise the test is skipped with a note.
fn redis_cli_present() -> bool {
    let present = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("RINGKV_REQUIRE_REDIS_TOOLS").as_deref() != Ok("1"),
            "redis-cli is required (RINGKV_REQUIRE_REDIS_TOOLS=1); install Debian's redis-tools"
        );
        eprintln!("note: redis-cli is missing; skipping (install redis-tools)");
    }
    present
}

const TOOL_BOUND: Duration = Duration::from_secs(60);

/// What redis-cli prints for one command (not at a terminal: the raw reply, one line each).
fn redis_cli(addr: SocketAddr, args: &[&str]) -> Finished {
    run_bounded(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args),
        b"",
        TOOL_BOUND,
    )
}

/// redis-cli's output for a command that succeeds.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let finished = redis_cli(addr, args);
    assert_eq!(finished.code(), Some(0), "redis-cli {args:?}: {finished:?}");
    finished.text()
}

fn cli_int(addr: SocketAddr, args: &[&str]) -> i64 {
    let text = cli(addr, args);
    text.trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("redis-cli {args:?} printed {text:?}"))
}

#[test]
fn redis_cli_sets_reads_and_takes_away_a_time_to_live() {
    if !redis_cli_present() {
        return;
    }
    let cluster = cluster();
    let addr = resp_addr(&cluster);
    assert_eq!(cli(addr, &["set", "cli:k", "v", "ex", "100"]), "OK\n");
    assert!((99..=100).contains(&cli_int(addr, &["ttl", "cli:k"])));
    assert!((95_000..=100_000).contains(&cli_int(addr, &["pttl", "cli:k"])));
    assert_eq!(cli_int(addr, &["expire", "cli:k", "50", "xx", "lt"]), 1);
    assert!((49..=50).contains(&cli_int(addr, &["ttl", "cli:k"])));
    let at = cli_int(addr, &["expiretime", "cli:k"]);
    assert!(
        (now_ms() / 1000 + 40..=now_ms() / 1000 + 51).contains(&at),
        "{at}"
    );
    assert_eq!(cli_int(addr, &["persist", "cli:k"]), 1);
    assert_eq!(cli_int(addr, &["ttl", "cli:k"]), -1);
    assert_eq!(cli_int(addr, &["ttl", "cli:absent"]), -2);
    assert_eq!(cli(addr, &["setex", "cli:s", "100", "v"]), "OK\n");
    assert_eq!(cli(addr, &["set", "cli:s", "w", "keepttl", "get"]), "v\n");
    assert!(cli_int(addr, &["pexpiretime", "cli:s"]) > now_ms());
    assert_eq!(cli(addr, &["psetex", "cli:p", "100", "v"]), "OK\n");
    retry(Duration::from_secs(5), "cli:p to expire", || {
        (cli(addr, &["get", "cli:p"]) == "\n").then_some(())
    });
    assert_eq!(cli_int(addr, &["exists", "cli:p"]), 0);

    // An error reply is printed as it came, and the key is left as it was.
    let refused = redis_cli(addr, &["set", "cli:k", "x", "ex", "0"]);
    assert!(
        refused
            .text()
            .contains("ERR invalid expire time in 'set' command"),
        "{refused:?}"
    );
    assert_eq!(cli(addr, &["get", "cli:k"]), "v\n");
    let refused = redis_cli(addr, &["expire", "cli:k", "10", "gt", "lt"]);
    assert!(
        refused
            .text()
            .contains("ERR GT and LT options at the same time are not compatible"),
        "{refused:?}"
    );
    assert_eq!(cli_int(addr, &["ttl", "cli:k"]), -1);
}

#[test]
fn info_keyspace_counts_the_keys_with_a_time_to_live() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    for i in 0..5 {
        assert_eq!(conn.cmd(&["SET", &format!("plain-{i}"), "v"]), ok());
    }
    for i in 0..3 {
        assert_eq!(
            conn.cmd(&["SET", &format!("ttl-{i}"), "v", "EX", "100"]),
            ok()
        );
    }
    let info = match conn.cmd(&["INFO", "keyspace"]) {
        Resp::Bulk(text) => String::from_utf8(text).unwrap(),
        other => panic!("INFO answered {other:?}"),
    };
    assert!(
        info.contains("db0:keys=8,expires=3,avg_ttl=0\r\n"),
        "{info:?}"
    );
}
