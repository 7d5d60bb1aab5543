//! How settings are read: each section ([`sections`]) is one struct that is both a set of clap
//! flags and a serde table. [`finish`] names every flag's `INSTAR_*` variable after its key and
//! applies the per-command defaults; [`load`] merges, with `figment`:
//!
//! built-in defaults < TOML file (`--config` / `INSTAR_CONFIG`) < `INSTAR_*` variables < flags.
//!
//! clap parses flags and variables (so both accept the same syntax: `a,b` lists, `1`/`yes`/`on`
//! booleans) and tells which of them were given ([`clap::parser::ValueSource`]); only those are
//! layered over the file, so a default never hides a file's value. [`reference`] renders
//! docs/configuration.md from the same clap metadata.

pub(crate) mod reference;
pub(crate) mod sections;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command, FromArgMatches};
use figment::Figment;
use figment::providers::Serialized;
use figment::value::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Arguments of a command that are not settings: no TOML key, and (but for `config`) no variable.
const META: [&str; 4] = ["help", "version", "config", "print_config"];

/// Deprecated variables still read, each as (old name, the setting it now sets): used only when
/// the setting's own variable is unset, with a warning ([`deprecations`]).
const DEPRECATED_VARIABLES: [(&str, &str); 1] = [("INSTAR_HTTP_PROXIES", "trusted_proxies")];

/// Deprecated keys of the config file, each as (old key, new key): renamed on reading, with a
/// warning, unless the new key is set too (then the old one is refused as unknown).
const DEPRECATED_KEYS: [(&str, &str); 2] = [
    ("http_proxies", "trusted_proxies"),
    ("social.trusted_proxies", "trusted_proxies"),
];

/// Warnings about deprecated settings found while reading them, logged once logging is up.
static DEPRECATIONS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn deprecated(warning: String) {
    let mut list = DEPRECATIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !list.contains(&warning) {
        list.push(warning);
    }
}

/// The deprecated settings met so far (each once), to log as warnings.
pub(crate) fn deprecations() -> Vec<String> {
    DEPRECATIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The variable that sets `id`: its own, or a deprecated one when only that is set.
fn variable_of(id: &str) -> String {
    let own = env_name(id);
    if std::env::var_os(&own).is_none()
        && let Some((old, _)) = DEPRECATED_VARIABLES
            .iter()
            .find(|(old, new)| *new == id && std::env::var_os(old).is_some())
    {
        deprecated(format!(
            "{old} is deprecated: it sets `{id}`, use {own} instead (docs/configuration.md)"
        ));
        return (*old).to_owned();
    }
    own
}

/// Names the `INSTAR_*` variable of every setting of every subcommand, and sets the defaults that
/// differ between commands.
pub(crate) fn finish(cli: Command) -> Command {
    finish_with(cli, true)
}

/// [`finish`], optionally without the variables (tests that must not read the environment).
pub(crate) fn finish_with(cli: Command, variables: bool) -> Command {
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut cli = cli;
    for name in names {
        // `instar probe` is a tool, not a service: it has no settings.
        if name == "probe" {
            continue;
        }
        cli = cli.mut_subcommand(&name, |sub| {
            // A group of commands (`instar tags backfill`): its commands have the settings.
            let nested: Vec<String> = sub
                .get_subcommands()
                .map(|s| s.get_name().to_owned())
                .collect();
            if nested.is_empty() {
                return name_settings(sub, &name, variables);
            }
            let mut sub = sub;
            for n in nested {
                sub = sub.mut_subcommand(&n, |s| name_settings(s, &n, variables));
            }
            sub
        });
    }
    cli
}

/// The per-command defaults and every setting's variable of one command.
fn name_settings(sub: Command, name: &str, variables: bool) -> Command {
    // In declaration order; `mut_arg` moves an argument to the end, so every argument is
    // visited once more below, after the default overrides, to restore that order.
    let ids: Vec<String> = sub
        .get_arguments()
        .map(|a| a.get_id().as_str().to_owned())
        .collect();
    let mut sub = match name {
        "gateway" => sub.mut_arg("tcp_listen", |a| {
            a.default_value(sections::GATEWAY_TCP_LISTEN)
        }),
        "social" => sub.mut_arg("listen", |a| a.default_value(sections::SOCIAL_LISTEN)),
        _ => sub,
    };
    for id in ids {
        let named = variables && (!META.contains(&id.as_str()) || id == "config");
        let env = if named {
            variable_of(&id)
        } else {
            env_name(&id)
        };
        sub = sub.mut_arg(&id, |a| if named { a.env(env) } else { a });
    }
    sub
}

/// The variable of a setting: `INSTAR_` and its key in capitals.
pub(crate) fn env_name(id: &str) -> String {
    format!("INSTAR_{}", id.to_ascii_uppercase())
}

/// Settings merged from every layer.
#[derive(Debug)]
pub(crate) struct Loaded<T> {
    pub value: T,
    /// `--print-config` was given.
    pub print_config: bool,
    /// Keys (`social.cors_origin`) set by the file, a variable or a flag rather than defaulted.
    given: BTreeSet<String>,
    /// Keys of secrets, masked by [`Loaded::to_json`].
    secrets: BTreeSet<String>,
}

impl<T: Serialize> Loaded<T> {
    /// Whether `key` was set (file, variable or flag) rather than left at its default.
    pub(crate) fn given(&self, key: &str) -> bool {
        self.given.contains(key)
    }

    /// The merged settings as JSON, secrets masked (`--print-config`).
    pub(crate) fn to_json(&self) -> anyhow::Result<String> {
        let mut json = serde_json::to_value(&self.value)?;
        for key in &self.secrets {
            let pointer = format!("/{}", key.replace('.', "/"));
            if let Some(v) = json.pointer_mut(&pointer)
                && !v.is_null()
            {
                *v = serde_json::Value::String("***".to_owned());
            }
        }
        Ok(serde_json::to_string_pretty(&json)?)
    }
}

/// Every setting's key, in declaration order (`listen`, ..., `social.data_dir`, ...), with its clap
/// id (the last part).
pub(crate) fn keys<T: Serialize>(parsed: &T) -> anyhow::Result<Vec<String>> {
    let value = Value::serialize(parsed).context("listing the settings")?;
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    Ok(keys)
}

fn collect_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Dict(_, dict) = value {
        for (k, v) in dict {
            let key = format!("{prefix}{k}");
            if matches!(v, Value::Dict(..)) {
                collect_keys(v, &format!("{key}."), out);
            } else {
                out.push(key);
            }
        }
    }
}

/// The clap id of a key: its last part.
fn id_of(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// Merges the defaults, the `--config` file, the variables and the flags of one command.
pub(crate) fn load<T>(cmd: &Command, matches: &ArgMatches) -> anyhow::Result<Loaded<T>>
where
    T: FromArgMatches + Serialize + DeserializeOwned,
{
    // Every setting, with clap's defaults, variables and flags: the bottom layer.
    let parsed = T::from_arg_matches(matches)?;
    let keys = keys(&parsed)?;
    let mut figment = Figment::from(Serialized::defaults(&parsed));
    let mut given = BTreeSet::new();
    if let Some(path) = matches.get_one::<std::path::PathBuf>("config") {
        let table = read_file(path, &keys)?;
        let mut file_keys = Vec::new();
        collect_keys(
            &Value::serialize(&table).context("reading the config file")?,
            "",
            &mut file_keys,
        );
        given.extend(file_keys);
        figment = figment.merge(Serialized::defaults(table));
    }
    let parsed_layer = Figment::from(Serialized::defaults(&parsed));
    let value_of = |key: &str| -> anyhow::Result<Value> { Ok(parsed_layer.find_value(key)?) };
    // Variables over the file, flags over the variables: only those actually given.
    for source in [ValueSource::EnvVariable, ValueSource::CommandLine] {
        for key in &keys {
            if matches.value_source(id_of(key)) == Some(source) {
                figment = figment.merge(Serialized::default(key, value_of(key)?));
                given.insert(key.clone());
            }
        }
    }
    let value: T = match figment.extract() {
        Ok(v) => v,
        Err(e) => return Err(explain::<T>(&figment, &parsed_layer, &given, matches, e)),
    };
    let secrets = keys
        .iter()
        .filter(|k| {
            cmd.get_arguments()
                .any(|a| a.get_id().as_str() == id_of(k) && a.is_hide_env_values_set())
        })
        .cloned()
        .collect();
    Ok(Loaded {
        value,
        print_config: matches.get_flag("print_config"),
        given,
        secrets,
    })
}

/// Names the setting that failed to merge: `serde(flatten)` loses the key, so each given setting
/// is tried alone over the defaults.
fn explain<T: DeserializeOwned>(
    merged: &Figment,
    defaults: &Figment,
    given: &BTreeSet<String>,
    matches: &ArgMatches,
    error: figment::Error,
) -> anyhow::Error {
    let file = matches
        .get_one::<std::path::PathBuf>("config")
        .map(|p| format!(" (config file {})", p.display()))
        .unwrap_or_default();
    for key in given {
        let Ok(value) = merged.find_value(key) else {
            continue;
        };
        let alone = defaults.clone().merge(Serialized::default(key, value));
        if let Err(e) = alone.extract::<T>() {
            return anyhow::anyhow!("invalid setting `{key}`{file}: {}", e.kind);
        }
    }
    anyhow::anyhow!("invalid settings{file}: {}", error.kind)
}

/// Reads the TOML file and refuses keys that are no setting of this command.
fn read_file(path: &Path, keys: &[String]) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    rename_deprecated(&mut table, keys);
    check_keys(&table, "", keys)
        .with_context(|| format!("parsing config file {}", path.display()))?;
    Ok(table)
}

/// Moves deprecated keys ([`DEPRECATED_KEYS`]) to their new place when that is free.
fn rename_deprecated(table: &mut toml::Table, keys: &[String]) {
    for (old, new) in DEPRECATED_KEYS {
        if !keys.iter().any(|k| k == new) || table.contains_key(new) {
            continue;
        }
        let value = match old.split_once('.') {
            None => table.remove(old),
            Some((section, key)) => {
                let (v, emptied) = match table.get_mut(section) {
                    Some(toml::Value::Table(t)) => {
                        let v = t.remove(key);
                        (v, t.is_empty())
                    }
                    _ => (None, false),
                };
                if emptied && v.is_some() {
                    table.remove(section);
                }
                v
            }
        };
        if let Some(value) = value {
            deprecated(format!(
                "config file key `{old}` is deprecated: use `{new}` (docs/configuration.md)"
            ));
            table.insert(new.to_owned(), value);
        }
    }
}

fn check_keys(table: &toml::Table, prefix: &str, keys: &[String]) -> anyhow::Result<()> {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        if keys.contains(&key) {
            continue;
        }
        let nested = format!("{key}.");
        match v {
            toml::Value::Table(t) if keys.iter().any(|known| known.starts_with(&nested)) => {
                check_keys(t, &nested, keys)?;
            }
            _ => anyhow::bail!(
                "unknown setting `{key}` (docs/configuration.md lists the settings of each command)"
            ),
        }
    }
    Ok(())
}

/// A STOMP/TCP listen setting: `off` (or empty) for none, else an address.
pub(crate) fn tcp_address(value: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("invalid tcp_listen address '{value}'"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file with `text` in a directory of its own under the temporary directory.
    pub(crate) fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "instar-settings-{}-{}",
            std::process::id(),
            gateway::random_id(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `instar social` with these flags, ignoring the environment.
    pub(crate) fn load_social(flags: &[&str]) -> Loaded<crate::social_cmd::SocialCmdArgs> {
        let cmd = finish_with(<crate::Cli as clap::CommandFactory>::command(), false);
        let argv = ["instar", "social"]
            .into_iter()
            .chain(flags.iter().copied());
        let matches = cmd.clone().try_get_matches_from(argv).unwrap();
        let sub = cmd.find_subcommand("social").unwrap();
        load(sub, matches.subcommand_matches("social").unwrap()).unwrap()
    }

    #[test]
    fn file_over_defaults_flags_over_file() {
        let file = temp_file(
            "s.toml",
            "listen = \"127.0.0.1:9001\"\ndrain_secs = 4\n[social]\nsmtp_port = 25\nsmtp_from = \"file@x\"\n",
        );
        let path = file.to_str().unwrap();
        let l = load_social(&["--config", path]);
        assert_eq!(l.value.http.listen.port(), 9001);
        assert_eq!(l.value.ops.drain_secs, 4);
        assert_eq!(l.value.social.smtp.smtp_port, 25);
        assert_eq!(l.value.social.smtp.smtp_security, "starttls", "default");
        assert!(l.given("social.smtp_port") && !l.given("social.smtp_security"));
        let l = load_social(&["--config", path, "--smtp-port", "2525", "--drain-secs", "0"]);
        assert_eq!(l.value.social.smtp.smtp_port, 2525);
        assert_eq!(
            l.value.ops.drain_secs, 0,
            "a flag equal to nothing special still wins"
        );
        assert_eq!(l.value.social.smtp.smtp_from, "file@x");
        // No file: the per-command default.
        assert_eq!(load_social(&[]).value.http.listen.port(), 8081);
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        let cmd = finish_with(<crate::Cli as clap::CommandFactory>::command(), false);
        let sub = cmd.find_subcommand("gateway").unwrap();
        let attempt = |text: &str| {
            let file = temp_file("bad.toml", text);
            let m = cmd
                .clone()
                .try_get_matches_from(["instar", "gateway", "--config", file.to_str().unwrap()])
                .unwrap();
            load::<crate::node_config::GatewayArgs>(sub, m.subcommand_matches("gateway").unwrap())
                .map(|_| String::new())
                .unwrap_or_else(|e| format!("{e:#}"))
        };
        assert!(attempt("nonsense = 1").contains("unknown setting `nonsense`"));
        // `social` is a table of `serve` and `social`, not of `gateway`.
        assert!(attempt("[social]\ncors_origin = \"x\"").contains("unknown setting `social`"));
        assert!(attempt("send_rate = \"fast\"").contains("invalid setting `send_rate`"));
        assert!(attempt("listen = [").contains("parsing config file"));
    }
}
