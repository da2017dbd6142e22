//! Settings from a file: `--config FILE` (TOML) gives any flag of a command, under the flag's
//! own name (`max-connections = 2048`, or `max_connections`); flags on the command line
//! override the file.
//!
//! The file is turned into command-line words before the flags are parsed, so a setting means
//! exactly what its flag means and is checked by the same parser: `key = "text"` or
//! `key = 123` becomes `--key text`, `key = true` the switch `--key` (`false`: left off). The
//! names a command knows are read from its own `--help`, so an unknown or misspelt setting is an
//! error naming the file, not a flag the user never typed. Positional arguments (a frontend's
//! backend addresses) stay on the command line.

use std::collections::BTreeMap;
use std::path::Path;

/// The flag that names the file.
pub const CONFIG_FLAG: &str = "--config";

/// What a command's `--help` says of its flags: each flag and whether it takes a value.
#[derive(Debug, Default, Clone)]
pub struct FlagSet {
    takes_value: BTreeMap<String, bool>,
}

impl FlagSet {
    /// Reads the flags from the text argh prints for `--help`: each line of its "Options:"
    /// section that starts with a flag names one, and its usage line says which take a value
    /// (`[--name <name>]`, against a switch's `[--name]`).
    pub fn from_help(help: &str) -> FlagSet {
        let usage = help.lines().next().unwrap_or("");
        let mut takes_value = BTreeMap::new();
        let mut in_options = false;
        for line in help.lines() {
            if line.trim_end() == "Options:" {
                in_options = true;
                continue;
            }
            if in_options && !line.starts_with(' ') && !line.is_empty() {
                in_options = false;
            }
            let flag = line.split_whitespace().next().unwrap_or("");
            if !in_options || !flag.starts_with("--") {
                continue;
            }
            let flag = flag.trim_end_matches(',');
            let value = usage.contains(&format!("{flag} <"));
            takes_value.insert(flag.to_string(), value);
        }
        FlagSet { takes_value }
    }

    /// True if the command has `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.takes_value.contains_key(flag)
    }

    /// True if `flag` is an option that takes a value (false for a switch or an unknown flag).
    pub fn takes_value(&self, flag: &str) -> bool {
        self.takes_value.get(flag).copied().unwrap_or(false)
    }

    /// Every flag, sorted.
    pub fn flags(&self) -> impl Iterator<Item = &str> {
        self.takes_value.keys().map(String::as_str)
    }
}

/// The file named by `--config` in `args` (the words after the command's name), if any.
pub fn config_path(args: &[String]) -> Result<Option<&str>, String> {
    match args.iter().position(|w| w == CONFIG_FLAG) {
        None => Ok(None),
        Some(at) => match args.get(at + 1) {
            Some(path) if !path.starts_with("--") => Ok(Some(path)),
            _ => Err(format!("{CONFIG_FLAG} needs a file")),
        },
    }
}

/// `args` (the words after the command's name) with the settings of `file`'s text put before
/// them, except those the command line gives itself. `flags` are the command's flags.
pub fn expand(
    args: &[String],
    file: &Path,
    text: &str,
    flags: &FlagSet,
) -> Result<Vec<String>, String> {
    let name = file.display();
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{name}: not valid TOML: {}", e.message()))?;
    let given: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|w| w.starts_with("--"))
        .collect();
    let mut words = Vec::new();
    for (key, value) in &table {
        let flag = format!("--{}", key.replace('_', "-"));
        if flag == CONFIG_FLAG || !flags.has(&flag) || flag == "--help" {
            return Err(format!(
                "{name}: unknown setting `{key}` (the settings are the command's flags, \
                 without the dashes: see --help)"
            ));
        }
        if given.contains(&flag.as_str()) {
            continue;
        }
        let text = match value {
            toml::Value::Boolean(on) if !flags.takes_value(&flag) => {
                if *on {
                    words.push(flag);
                }
                continue;
            }
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(on) => on.to_string(),
            other => {
                return Err(format!(
                    "{name}: `{key}` must be a string, a number or true/false, not {}",
                    other.type_str()
                ))
            }
        };
        if !flags.takes_value(&flag) {
            return Err(format!(
                "{name}: `{key}` is a switch: give it true or false"
            ));
        }
        words.push(flag);
        words.push(text);
    }
    words.extend(args.iter().cloned());
    Ok(words)
}

/// Renders `settings` (flag names without the dashes, and their values) as a file `--config`
/// reads back.
pub fn render(settings: Vec<(&str, toml::Value)>) -> String {
    let mut table = toml::Table::new();
    for (key, value) in settings {
        table.insert(key.to_string(), value);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "Usage: ringkv local [--backends <backends>] [--listen <listen>] \
        [--paper] [--config <config>]\n\n\
        Start a cluster.\n\nOptions:\n  --backends        number of backends\n\
        \x20 --listen          address to listen on, a long description that goes on\n\
        \x20                   over a second line --not-a-flag\n\
        \x20 --paper           the paper's design\n  --config          file of settings\n\
        \x20 --help, help      display usage information\n";

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    fn flags() -> FlagSet {
        FlagSet::from_help(HELP)
    }

    #[test]
    fn the_flags_and_which_take_a_value_are_read_from_the_help() {
        let flags = flags();
        assert_eq!(
            flags.flags().collect::<Vec<_>>(),
            ["--backends", "--config", "--help", "--listen", "--paper"]
        );
        assert!(flags.takes_value("--backends"));
        assert!(flags.takes_value("--listen"));
        assert!(!flags.takes_value("--paper"));
        assert!(!flags.takes_value("--help"));
    }

    #[test]
    fn settings_become_flags_and_the_command_line_overrides_them() {
        let text = "backends = 5\npaper = true\nconfig_unused_is_absent = 1\n";
        let text = text.replace("config_unused_is_absent = 1\n", "");
        let args = words(&["--backends", "2", "--config", "f.toml"]);
        let path = Path::new("f.toml");
        assert_eq!(
            expand(&args, path, &text, &flags()).unwrap(),
            words(&["--paper", "--backends", "2", "--config", "f.toml"])
        );
        assert_eq!(
            expand(&words(&[]), path, "backends = 5\npaper = false", &flags()).unwrap(),
            words(&["--backends", "5"])
        );
        assert_eq!(
            expand(&words(&[]), path, "backends = \"7\"", &flags()).unwrap(),
            words(&["--backends", "7"])
        );
    }

    #[test]
    fn unknown_settings_and_wrong_kinds_name_the_file() {
        let path = Path::new("/etc/ringkv/local.toml");
        let flags = flags();
        for (text, expected) in [
            ("max_connectoins = 5", "unknown setting `max_connectoins`"),
            ("config = \"other.toml\"", "unknown setting `config`"),
            ("paper = \"yes\"", "`paper` is a switch"),
            (
                "backends = [1, 2]",
                "must be a string, a number or true/false",
            ),
            ("[section]\nbackends = 1", "unknown setting `section`"),
            ("backends = ", "not valid TOML"),
        ] {
            let err = expand(&[], path, text, &flags).unwrap_err();
            assert!(err.starts_with("/etc/ringkv/local.toml: "), "{err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn the_config_flag_needs_a_file() {
        assert_eq!(config_path(&words(&["--paper"])), Ok(None));
        assert_eq!(
            config_path(&words(&["--config", "f.toml", "--paper"])),
            Ok(Some("f.toml"))
        );
        assert!(config_path(&words(&["--config"])).is_err());
        assert!(config_path(&words(&["--config", "--paper"])).is_err());
    }

    #[test]
    fn rendered_settings_read_back() {
        let text = render(vec![
            ("backends", toml::Value::Integer(3)),
            ("listen", toml::Value::String("127.0.0.1:7000".into())),
            ("paper", toml::Value::Boolean(false)),
        ]);
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["backends"].as_integer(), Some(3));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:7000"));
        assert_eq!(table["paper"].as_bool(), Some(false));
    }
}
