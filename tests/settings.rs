//! Settings layering of the real `instar` binary: built-in defaults < TOML file < `INSTAR_*`
//! variables < flags, for each of the three commands, read back with `--print-config`; `--help`
//! shows the defaults the code uses and never a secret.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

/// `instar <args>` with only these `INSTAR_*` variables (the caller's are removed).
fn instar(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_instar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("INSTAR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(envs.iter().copied());
    cmd.output().unwrap()
}

fn print_config(args: &[&str], envs: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = instar(&all, envs);
    assert!(
        out.status.success(),
        "instar {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn toml_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "instar-settings-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("instar.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Four settings `a`..`d` (TOML keys, as JSON pointers): `a` is left at its default, `b` set by
/// the file, `c` by the file and a variable, `d` by all three. Each layer's value must win over
/// the ones below it.
struct Case {
    command: &'static str,
    /// The file, setting b, c and d.
    file: &'static str,
    /// (pointer, default)
    a: (&'static str, Value),
    /// (pointer, file's value)
    b: (&'static str, Value),
    /// (pointer, variable, value) — the variable also overrides the file.
    c: (&'static str, (&'static str, &'static str), Value),
    /// (pointer, variable, variable's value, flag, flag's value, value)
    d: (
        &'static str,
        (&'static str, &'static str),
        (&'static str, &'static str),
        Value,
    ),
}

fn check(case: Case) {
    let file = toml_file(case.command, case.file);
    let file = file.to_str().unwrap();
    let Case {
        command,
        a,
        b,
        c,
        d,
        ..
    } = case;
    let run = |flags: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec![command, "--config", file];
        args.extend_from_slice(flags);
        print_config(&args, envs)
    };
    // The file alone: it overrides the defaults it names.
    let only_file = run(&[], &[]);
    assert_eq!(
        only_file.pointer(a.0),
        Some(&a.1),
        "{command}: default of {}",
        a.0
    );
    assert_eq!(
        only_file.pointer(b.0),
        Some(&b.1),
        "{command}: file's {}",
        b.0
    );
    // The variables over the file; the file still sets what they do not.
    let envs = [c.1, d.1];
    let with_env = run(&[], &envs);
    assert_eq!(
        with_env.pointer(b.0),
        Some(&b.1),
        "{command}: file's {}",
        b.0
    );
    assert_eq!(
        with_env.pointer(c.0),
        Some(&c.2),
        "{command}: variable's {}",
        c.0
    );
    assert_ne!(
        with_env.pointer(d.0),
        only_file.pointer(d.0),
        "{command}: variable's {}",
        d.0
    );
    // The flags over the variables.
    let all = run(&[d.2.0, d.2.1], &envs);
    assert_eq!(
        all.pointer(a.0),
        Some(&a.1),
        "{command}: default of {}",
        a.0
    );
    assert_eq!(all.pointer(b.0), Some(&b.1), "{command}: file's {}", b.0);
    assert_eq!(
        all.pointer(c.0),
        Some(&c.2),
        "{command}: variable's {}",
        c.0
    );
    assert_eq!(all.pointer(d.0), Some(&d.3), "{command}: flag's {}", d.0);
    // Without the file, the variable and the flag alone.
    let no_file = print_config(&[command, d.2.0, d.2.1], &envs);
    assert_eq!(no_file.pointer(d.0), Some(&d.3));
    let _ = std::fs::remove_dir_all(std::path::Path::new(file).parent().unwrap());
}

#[test]
fn serve_file_then_variable_then_flag() {
    check(Case {
        command: "serve",
        file: r#"
            send_rate = 7
            heartbeat_ms = 1111
            max_body = 1000
            [social]
            smtp_port = 2525
            cors_origin = "http://file.example"
        "#,
        a: ("/outbound_queue", Value::from(1024)),
        b: ("/send_rate", Value::from(7)),
        c: (
            "/heartbeat_ms",
            ("INSTAR_HEARTBEAT_MS", "2222"),
            Value::from(2222),
        ),
        d: (
            "/social/cors_origin",
            ("INSTAR_CORS_ORIGIN", "http://env.example"),
            ("--cors-origin", "http://flag.example"),
            Value::from("http://flag.example"),
        ),
    });
}

#[test]
fn gateway_file_then_variable_then_flag() {
    check(Case {
        command: "gateway",
        file: r#"
            bus_prefix = "from-file"
            lease_ttl_ms = 5000
            public_topics = ["file."]
            allow_anonymous = true
        "#,
        a: ("/durable_node_queues", Value::from(true)),
        b: ("/bus_prefix", Value::from("from-file")),
        c: (
            "/public_topics",
            ("INSTAR_PUBLIC_TOPICS", "env.,other."),
            serde_json::json!(["env.", "other."]),
        ),
        d: (
            "/allow_anonymous",
            ("INSTAR_ALLOW_ANONYMOUS", "no"),
            ("--allow-anonymous", "yes"),
            Value::from(true),
        ),
    });
}

#[test]
fn social_file_then_variable_then_flag() {
    check(Case {
        command: "social",
        file: r#"
            listen = "127.0.0.1:9100"
            drain_secs = 3
            [social]
            database_pool = 4
            read_cache_entries = 10
        "#,
        a: ("/social/smtp_port", Value::from(587)),
        b: ("/listen", Value::from("127.0.0.1:9100")),
        c: ("/drain_secs", ("INSTAR_DRAIN_SECS", "5"), Value::from(5)),
        d: (
            "/social/database_pool",
            ("INSTAR_DATABASE_POOL", "6"),
            ("--database-pool", "8"),
            Value::from(8),
        ),
    });
}

#[test]
fn per_command_defaults_and_help_from_the_same_values() {
    let serve = print_config(&["serve"], &[]);
    let gateway = print_config(&["gateway"], &[]);
    let social = print_config(&["social"], &[]);
    assert_eq!(serve["tcp_listen"], "127.0.0.1:61613");
    assert_eq!(gateway["tcp_listen"], "off");
    assert_eq!(serve["listen"], "127.0.0.1:8080");
    assert_eq!(social["listen"], "127.0.0.1:8081");
    // --help shows the same defaults.
    let help = |cmd: &str| String::from_utf8(instar(&[cmd, "--help"], &[]).stdout).unwrap();
    assert!(help("serve").contains("[default: 127.0.0.1:61613]"));
    assert!(help("gateway").contains("[default: off]"));
    assert!(help("social").contains("[default: 127.0.0.1:8081]"));
    assert!(help("serve").contains("[default: 10000]"), "heartbeat_ms");
}

#[test]
fn secrets_stay_hidden() {
    let secret = "a-secret-that-must-not-show-0123456789";
    let envs = [
        ("INSTAR_JWT_SECRET", secret),
        ("INSTAR_SMTP_PASSWORD", secret),
        ("INSTAR_METRICS_TOKEN", secret),
        (
            "INSTAR_AMQP_URL",
            "amqp://user:a-secret-that-must-not-show-0123456789@h/",
        ),
    ];
    for cmd in ["serve", "gateway", "social"] {
        let out = instar(&[cmd, "--help"], &envs);
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("INSTAR_JWT_SECRET"), "{cmd}");
        assert!(
            !help.contains(secret),
            "`instar {cmd} --help` shows a secret"
        );
        let printed = print_config(&[cmd], &envs).to_string();
        assert!(
            !printed.contains(secret),
            "`instar {cmd} --print-config` shows a secret"
        );
        assert!(printed.contains("\"jwt_secret\":\"***\""), "{printed}");
    }
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let file = toml_file("bad", "[social]\nsmtp_prot = 25\n");
    let out = instar(&["social", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting `social.smtp_prot`"), "{err}");
    let file = toml_file("bad-type", "[social]\nsmtp_port = \"x\"\n");
    let out = instar(&["serve", "--config", file.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid setting `social.smtp_port`"), "{err}");
    let out = instar(&["gateway"], &[("INSTAR_SEND_RATE", "fast")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'fast'"));
}

/// Destination rules: `[[destinations]]` tables in the file, `INSTAR_DESTINATIONS` (JSON) over
/// them, and bad rules refused at start with every problem named.
#[test]
fn destination_rules_from_the_file_and_the_variable() {
    let file = toml_file(
        "destinations",
        "[[destinations]]\nprefix = \"/queue/jobs.\"\nsubscribe = \"signed-in\"\nsend = \"role:ROLE_WORKER\"\n",
    );
    let file = file.to_str().unwrap();
    for command in ["serve", "gateway"] {
        let v = print_config(&[command, "--config", file], &[]);
        assert_eq!(v["destinations"][0]["prefix"], "/queue/jobs.", "{v}");
        assert_eq!(v["destinations"][0]["send"], "role:ROLE_WORKER", "{v}");
        let json = r#"[{"prefix":"/topic/demo.","subscribe":"signed-in","wildcards":true}]"#;
        let v = print_config(
            &[command, "--config", file],
            &[("INSTAR_DESTINATIONS", json)],
        );
        assert_eq!(v["destinations"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["destinations"][0]["prefix"], "/topic/demo.", "{v}");
        assert_eq!(v["destinations"][0]["wildcards"], true, "{v}");
        let out = instar(
            &[command, "--print-config"],
            &[("INSTAR_DESTINATIONS", r#"[{"prefix":"/app/x"}]"#)],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/app/x"), "{err}");
    }
}

#[test]
fn one_proxy_setting_with_its_deprecated_aliases() {
    for cmd in ["serve", "gateway", "social"] {
        let v = print_config(&[cmd], &[]);
        assert_eq!(
            v["trusted_proxies"],
            json!(["127.0.0.0/8", "::1/128"]),
            "{cmd}"
        );
        assert!(v.get("http_proxies").is_none(), "{cmd}");
        assert!(v["social"].get("trusted_proxies").is_none(), "{cmd}");
        let v = print_config(&[cmd], &[("INSTAR_TRUSTED_PROXIES", "10.0.0.0/8")]);
        assert_eq!(v["trusted_proxies"], json!(["10.0.0.0/8"]), "{cmd}");
        // The deprecated variable counts when the new one is not set, and only then.
        let v = print_config(&[cmd], &[("INSTAR_HTTP_PROXIES", "10.1.0.0/16")]);
        assert_eq!(v["trusted_proxies"], json!(["10.1.0.0/16"]), "{cmd}");
        let v = print_config(
            &[cmd],
            &[
                ("INSTAR_HTTP_PROXIES", "10.1.0.0/16"),
                ("INSTAR_TRUSTED_PROXIES", "none"),
            ],
        );
        assert_eq!(v["trusted_proxies"], json!(["none"]), "{cmd}");
        // So do the deprecated file keys.
        let old = toml_file(
            &format!("proxies-{cmd}"),
            "http_proxies = [\"10.2.0.0/16\"]\n",
        );
        let v = print_config(&[cmd, "--config", old.to_str().unwrap()], &[]);
        assert_eq!(v["trusted_proxies"], json!(["10.2.0.0/16"]), "{cmd}");
    }
    for cmd in ["serve", "social"] {
        let old = toml_file(
            &format!("social-proxies-{cmd}"),
            "[social]\ntrusted_proxies = [\"10.3.0.0/16\"]\ncors_origin = \"http://x.example\"\n",
        );
        let v = print_config(&[cmd, "--config", old.to_str().unwrap()], &[]);
        assert_eq!(v["trusted_proxies"], json!(["10.3.0.0/16"]), "{cmd}");
        assert_eq!(
            v["social"]["cors_origin"],
            json!("http://x.example"),
            "{cmd}"
        );
    }
}
