//! `--config FILE`: every flag from a TOML file under its own name, flags on the command line
//! overriding it, and `ringkv local --print-config` showing the effective settings.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::process::{run_bounded, Server};
use common::{TempDir, BOUND};

const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");

fn config_file(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("ringkv.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn ringkv(args: &[&str]) -> common::process::Finished {
    run_bounded(Command::new(RINGKV).args(args), b"", BOUND)
}

fn print_config(args: &[&str]) -> toml::Table {
    let mut all = vec!["local"];
    all.extend_from_slice(args);
    all.push("--print-config");
    let printed = ringkv(&all);
    assert_eq!(printed.code(), Some(0), "{printed:?}");
    printed
        .text()
        .parse()
        .unwrap_or_else(|e| panic!("--print-config is not TOML: {e}\n{}", printed.text()))
}

#[test]
fn the_file_sets_flags_and_the_command_line_overrides_it() {
    let dir = TempDir::new("config", "override");
    let file = config_file(
        &dir,
        "backends = 5\nlisten = \"127.0.0.1:7100\"\npaper = true\nfsync = \"always\"\n\
         max_disk_bytes = 1000000\nping-interval = 50\n",
    );
    let file = file.to_str().unwrap();
    let settings = print_config(&["--config", file, "--backends", "2"]);
    assert_eq!(settings["backends"].as_integer(), Some(2), "the flag wins");
    assert_eq!(settings["listen"].as_str(), Some("127.0.0.1:7100"));
    assert_eq!(settings["paper"].as_bool(), Some(true));
    assert_eq!(settings["fsync"].as_str(), Some("always"));
    assert_eq!(settings["max-disk-bytes"].as_integer(), Some(1_000_000));
    assert_eq!(settings["ping-interval"].as_integer(), Some(50));
    // Defaults show too.
    assert_eq!(settings["threads"].as_integer(), Some(64));
    assert_eq!(settings["ping-timeout"].as_integer(), Some(400));
}

#[test]
fn what_print_config_prints_reads_back_the_same() {
    let dir = TempDir::new("config", "round-trip");
    let first = ringkv(&[
        "local",
        "--backends",
        "4",
        "--fsync",
        "never",
        "--print-config",
    ]);
    assert_eq!(first.code(), Some(0), "{first:?}");
    let file = config_file(&dir, &first.text());
    let again = ringkv(&[
        "local",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ]);
    assert_eq!(again.code(), Some(0), "{again:?}");
    assert_eq!(again.text(), first.text());
}

#[test]
fn print_config_shows_every_flag_of_local() {
    let help = ringkv(&["local", "--help"]);
    let printed = ringkv(&["local", "--print-config"]).text();
    let shown: Vec<String> = printed
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches("# ");
            line.split([' ', ':']).next().map(str::to_string)
        })
        .collect();
    let flags = ringkv::config::FlagSet::from_help(&help.text());
    let mut checked = 0;
    for flag in flags.flags() {
        if ["--help", "--config", "--print-config"].contains(&flag) {
            continue;
        }
        let key = flag.trim_start_matches("--");
        assert!(
            shown.iter().any(|s| s == key),
            "--print-config does not show {flag}:\n{printed}"
        );
        checked += 1;
    }
    assert!(
        checked > 15,
        "only {checked} flags found in:\n{}",
        help.text()
    );
}

#[test]
fn a_bad_file_is_a_usage_error_naming_it() {
    let dir = TempDir::new("config", "bad");
    for (text, expected) in [
        ("max_connectoins = 5\n", "unknown setting `max_connectoins`"),
        ("backends = \n", "not valid TOML"),
        ("paper = \"yes\"\n", "`paper` is a switch"),
    ] {
        let file = config_file(&dir, text);
        let file = file.to_str().unwrap();
        let refused = ringkv(&["local", "--config", file]);
        assert_eq!(refused.code(), Some(2), "{text}: {refused:?}");
        assert!(
            refused.stderr.contains(file) && refused.stderr.contains(expected),
            "{text}: {refused:?}"
        );
    }
    let missing = ringkv(&["backend", "--config", "/nonexistent/ringkv.toml"]);
    assert_eq!(missing.code(), Some(2), "{missing:?}");
    assert!(missing
        .stderr
        .contains("cannot read /nonexistent/ringkv.toml"));
    // A value the flag refuses is refused as the flag would be.
    let file = config_file(&dir, "fsync = \"sometimes\"\n");
    let refused = ringkv(&["local", "--config", file.to_str().unwrap()]);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("fsync"), "{refused:?}");
}

#[test]
fn servers_start_with_their_settings_from_a_file() {
    let dir = TempDir::new("config", "start");
    let local = config_file(
        &dir,
        "backends = 2\nlisten = \"127.0.0.1:0\"\nresp-listen = \"off\"\nreplicas = 1\n",
    );
    let cluster = Server::start(&["local", "--config", local.to_str().unwrap()]);
    let frontend = cluster.listening("frontend");
    let mut client = ringkv::Client::connect(&frontend).unwrap();
    client.put(b"from a file", b"yes").unwrap();
    assert_eq!(
        client.get(b"from a file").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        client.size().unwrap().len(),
        2 + 1,
        "two backends and the total"
    );

    let backend_file = dir.path().join("backend.toml");
    std::fs::write(
        &backend_file,
        "listen = \"127.0.0.1:0\"\nmax-connections = 3\nmax-key-bytes = 100\n",
    )
    .unwrap();
    let backend = Server::start(&["backend", "--config", backend_file.to_str().unwrap()]);
    backend.listening("backend");
}
