//! docs/configuration.md, rendered from the clap metadata of the settings (`instar
//! config-reference`); a test compares the committed file with it.

use std::fmt::Write as _;

use clap::Command;

/// The command that regenerates the reference.
pub(crate) const REGENERATE: &str = "cargo run -- config-reference > docs/configuration.md";

/// Renders the reference of every visible subcommand of `cli` (as [`super::finish`] made it);
/// `keys` gives a subcommand's TOML keys (`listen`, `social.data_dir`, ...).
pub(crate) fn render(
    cli: &Command,
    keys: &dyn Fn(&str) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    out.push_str(&format!(
        "# Configuration reference\n\
         \n\
         <!-- Generated from the code (src/settings/sections.rs) by `{REGENERATE}`;\n\
         a test fails when this file differs from what the code renders. Do not edit by hand. -->\n\
         \n\
         Every setting of every command, with its key in the TOML file, its variable, its flag,\n\
         its default and its meaning. Each setting is read from, in increasing precedence:\n\
         \n\
         1. the built-in default (the column below; `--help` shows the same value);\n\
         2. the TOML file given by `--config FILE` or `INSTAR_CONFIG` (keys `social.x` go in a\n   \
         `[social]` table; a key that is no setting of the command is refused);\n\
         3. the `INSTAR_*` variable;\n\
         4. the flag.\n\
         \n\
         Variables and flags take the same syntax: lists are comma-separated (`a,b`; arrays in\n\
         TOML), booleans are `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off` (TOML booleans in\n\
         the file). `--print-config` prints the merged settings as JSON (secrets masked) and exits.\n\
         `--help` never shows a secret's value. A default of \"—\" means the setting is unset unless\n\
         given; its meaning says what unset does. Design: docs/architecture.md (\"Settings\").\n"
    ));
    // The commands with settings: a group's (`instar tags`) are its commands (`tags backfill`).
    let mut commands: Vec<(String, &Command)> = Vec::new();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.has_subcommands() {
            for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("{} {}", sub.get_name(), nested.get_name());
                commands.push((name, nested));
            }
        } else {
            commands.push((sub.get_name().to_owned(), sub));
        }
    }
    for (name, sub) in commands {
        let name = name.as_str();
        let keys = keys(name)?;
        let _ = write!(out, "\n## `instar {name}`\n");
        if let Some(about) = sub.get_about() {
            let _ = writeln!(out, "\n{}", one_line(&about.to_string()));
        }
        let mut heading: Option<String> = None;
        let mut first = true;
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "print_config") {
                continue;
            }
            let this_heading = arg.get_help_heading().unwrap_or("Config file").to_owned();
            if first || heading.as_deref() != Some(this_heading.as_str()) {
                let _ = write!(
                    out,
                    "\n### {this_heading}\n\n\
                     | TOML key | variable | flag | default | meaning |\n\
                     |---|---|---|---|---|\n"
                );
                heading = Some(this_heading);
                first = false;
            }
            let key = if id == "config" {
                "—".to_owned()
            } else {
                let key = keys
                    .iter()
                    .find(|k| k.rsplit('.').next() == Some(id))
                    .ok_or_else(|| anyhow::anyhow!("`instar {name}`: {id} has no TOML key"))?;
                format!("`{key}`")
            };
            let env = arg
                .get_env()
                .map(|e| format!("`{}`", e.to_string_lossy()))
                .unwrap_or_else(|| "—".to_owned());
            let flag = arg
                .get_long()
                .map(|l| format!("`--{l}`"))
                .unwrap_or_else(|| "—".to_owned());
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            let default = if defaults.is_empty() {
                "—".to_owned()
            } else {
                format!("`{}`", defaults.join(","))
            };
            let mut meaning = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| one_line(&h.to_string()))
                .unwrap_or_default();
            if arg.is_hide_env_values_set() {
                meaning.push_str(" (secret)");
            }
            let _ = writeln!(out, "| {key} | {env} | {flag} | {default} | {meaning} |");
        }
    }
    Ok(out)
}

/// Help text on one line of a table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
