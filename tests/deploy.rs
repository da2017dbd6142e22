//! The deployment recipes under `examples/deploy/` and README's references stay true: every flag
//! the systemd units and the container recipe pass exists on the role they start, and every
//! repository file README names is in the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The flags `ringkv ROLE --help` lists.
fn flags_of(role: &str) -> BTreeSet<String> {
    let help = Command::new(RINGKV)
        .args([role, "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "ringkv {role} --help failed");
    flags_in(&String::from_utf8_lossy(&help.stdout))
}

/// Every `--flag` word in `text`.
fn flags_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.split('=').next().unwrap().to_string())
        .collect()
}

/// The command a unit starts: its ExecStart line with the continuations joined.
fn exec_start(unit: &str) -> String {
    let joined = unit.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has no ExecStart")
        .to_string()
}

/// The role (backend, frontend, local) a command line of ringkv starts, and its flags.
fn role_and_flags(command: &str) -> (String, BTreeSet<String>) {
    let mut words = command
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
        .filter(|w| !w.is_empty());
    let role = words
        .find(|w| ["backend", "frontend", "local"].contains(w))
        .unwrap_or_else(|| panic!("no role in {command:?}"))
        .to_string();
    (role, flags_in(command))
}

fn assert_flags_exist(what: &str, command: &str) {
    let (role, flags) = role_and_flags(command);
    assert!(!flags.is_empty(), "{what}: no flags in {command:?}");
    let known = flags_of(&role);
    let unknown: Vec<&String> = flags.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "{what} passes flags that `ringkv {role}` does not have: {unknown:?}"
    );
}

#[test]
fn the_systemd_units_pass_only_flags_their_role_has() {
    for (unit, role) in [
        ("examples/deploy/ringkv-backend.service", "backend"),
        ("examples/deploy/ringkv-frontend.service", "frontend"),
    ] {
        let command = exec_start(&read(unit));
        assert!(
            command.starts_with("/usr/local/bin/ringkv "),
            "{unit}: {command}"
        );
        assert_eq!(role_and_flags(&command).0, role, "{unit}");
        assert_flags_exist(unit, &command);
    }
}

#[test]
fn the_container_recipe_passes_only_flags_that_exist() {
    let dockerfile = read("examples/deploy/Dockerfile");
    let cmd = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("CMD "))
        .expect("the Dockerfile has no CMD");
    assert_flags_exist("the Dockerfile's CMD", cmd);
    // The `docker run` lines of its header, continuations joined.
    let header: String = dockerfile
        .lines()
        .take_while(|line| line.starts_with('#'))
        .map(|line| line.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let runs: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with("docker run"))
        .collect();
    assert!(runs.len() >= 2, "{header}");
    for run in runs {
        // The flags after the image name are ringkv's; those before it are docker's.
        let after_image = run.split(" ringkv ").nth(1).expect("an image name");
        assert_flags_exist("a docker run line", after_image);
    }
}

/// Every file of the repository, relative to its root (without target/ and .git/).
fn repository_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(ROOT), Path::new(ROOT), &mut files);
    files
}

/// The words in backquotes in `text` that name a file of a repository: a path under one of its
/// folders, or a name with a source or document extension (absolute paths are the host's).
fn cited_files(text: &str) -> BTreeSet<String> {
    const FOLDERS: [&str; 5] = ["src/", "tests/", "benches/", "examples/", ".ci/"];
    // Not .toml: README's examples write settings files of their own.
    const EXTENSIONS: [&str; 6] = [".rs", ".md", ".sh", ".py", ".service", ".lock"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|quoted| quoted.split_whitespace())
        .map(|word| word.trim_end_matches([',', '.', ':', ')']))
        .filter(|word| {
            let path_like = word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-./".contains(c));
            path_like
                && (FOLDERS.iter().any(|f| word.starts_with(f))
                    || EXTENSIONS.iter().any(|e| word.ends_with(e)))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_file_readme_names_is_in_the_repository() {
    let files = repository_files();
    let readme = read("README.md");
    let cited = cited_files(&readme);
    assert!(cited.contains("examples/deploy/Dockerfile") || cited.len() > 5);
    let missing: Vec<&String> = cited
        .iter()
        .filter(|cited| {
            let cited_path = Path::new(cited.trim_end_matches('/'));
            // A bare name (as in the layout) may be anywhere; a path must be where it says.
            !files.iter().any(|f| {
                f == cited_path
                    || f.starts_with(cited_path)
                    || (cited_path.components().count() == 1 && f.ends_with(cited_path))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README.md names files that are not in the repository: {missing:?}"
    );
    assert!(files.iter().any(|f| f == Path::new("LICENSE")));
}

#[test]
fn the_license_file_is_the_one_cargo_toml_declares() {
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("license = \"MIT\""),
        "Cargo.toml: {manifest}"
    );
    assert!(read("LICENSE").starts_with("MIT License"));
}
