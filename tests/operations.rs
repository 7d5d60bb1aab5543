//! The operations kit in `deploy/`, checked as far as this machine can check it:
//! * the Grafana dashboard names only metrics the code exports (read from a live `/metrics`) and
//!   documents (docs/metrics.md), and docs/metrics.md agrees with the live scrape both ways;
//! * the Prometheus scrape configuration and the compose file agree on roles, ports and health;
//! * nginx rendered with `--static` and `--tls` serves the frontend and proxies the API over TLS;
//! * the systemd units pass `systemd-analyze verify` and score as hardened;
//! * the binary links only glibc and libgcc and runs from the runtime image's layout;
//! * `instar probe` succeeds, fails and waits as the health checks need.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flow_support::{start, start_with, unique_dir};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A tool this test needs: fails under CI, skips (with a note) elsewhere.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(!ci(), "{name} not found: scripts/test installs it");
        eprintln!("note: {name} not found; skipping");
    }
    found
}

/// Metric names in `text`: `# TYPE` lines of a scrape.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The metric names in the first column of docs/metrics.md's tables.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("instar_"))
        .map(str::to_owned)
        .collect()
}

/// Every `instar_*` identifier in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("instar_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_names_an_exported_and_documented_metric() {
    // Google sign-in on (endpoints given, so nothing is discovered at start): its counters too.
    let google = "http://127.0.0.1:9/google";
    let server = start_with(&[
        ("INSTAR_CORS_ORIGIN", "http://localhost:3000".into()),
        ("INSTAR_GOOGLE_CLIENT_ID", "client".into()),
        ("INSTAR_GOOGLE_CLIENT_SECRET", "secret".into()),
        (
            "INSTAR_GOOGLE_REDIRECT_URI",
            "http://127.0.0.1/api/auth/google/callback".into(),
        ),
        (
            "INSTAR_GOOGLE_AUTHORIZATION_ENDPOINT",
            format!("{google}/auth"),
        ),
        ("INSTAR_GOOGLE_TOKEN_ENDPOINT", format!("{google}/token")),
        ("INSTAR_GOOGLE_JWKS_URI", format!("{google}/jwks")),
        (
            "INSTAR_GOOGLE_USERINFO_ENDPOINT",
            format!("{google}/userinfo"),
        ),
    ])
    .await;
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let live = exported(&text);
    let docs = documented();
    assert!(live.len() > 30, "{text}");
    // docs/metrics.md against the live scrape of `instar serve` (gateway + social), both ways.
    let undocumented: Vec<_> = live.difference(&docs).collect();
    let missing: Vec<_> = docs.difference(&live).collect();
    assert!(
        undocumented.is_empty(),
        "exported, not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in docs/metrics.md, not exported: {missing:?}"
    );

    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(repo().join("deploy/grafana/instar-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut all = Vec::new();
    exprs(&dashboard["panels"], &mut all);
    assert!(all.len() > 20, "{all:?}");
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = names_in(expr);
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "names no Instar metric: {expr}"
        );
        for name in names {
            // Summaries and histograms are scraped as `{name}_sum`, `{name}_count` (and
            // `{name}_bucket`).
            let base = ["_sum", "_count", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| live.contains(*b)))
                .unwrap_or(&name)
                .to_owned();
            assert!(live.contains(&base), "{name} is not exported ({expr})");
            assert!(
                docs.contains(&base),
                "{name} is not in docs/metrics.md ({expr})"
            );
            used.insert(base);
        }
    }
    // ... and every metric has a panel.
    let unused: Vec<_> = live.difference(&used).collect();
    assert!(unused.is_empty(), "no panel shows {unused:?}");
    // Every panel reads the data source variable.
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

#[test]
fn names_are_found_in_promql() {
    assert_eq!(
        names_in("sum by (i) (rate(instar_a_total{job=~\"x\"}[5m])) / rate(instar_b_sum[1m])"),
        ["instar_a_total", "instar_b_sum"]
    );
    assert!(names_in("up{job=~\"instar.*\"}").is_empty());
    assert!(names_in("my_instar_x").is_empty());
}

/// YAML as JSON, through the test venv's Python (PyYAML comes with moto).
fn yaml(path: &Path) -> Option<Value> {
    let Ok(python) = std::env::var("INSTAR_PYTHON") else {
        assert!(!ci(), "INSTAR_PYTHON is not set: run through scripts/test");
        eprintln!("note: INSTAR_PYTHON is not set; skipping");
        return None;
    };
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn prometheus_and_compose_agree_on_roles_ports_health_and_nginx() {
    let Some(prom) = yaml(&repo().join("deploy/prometheus/prometheus.yml")) else {
        return;
    };
    let Some(compose) = yaml(&repo().join("deploy/compose.yaml")) else {
        return;
    };
    let services = compose["services"].as_object().unwrap();
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"].as_array().unwrap() {
        assert!(job["job_name"].as_str().unwrap().starts_with("instar"));
        assert_eq!(job["metrics_path"], "/metrics");
        assert_eq!(job["authorization"]["type"], "Bearer");
        let token = job["authorization"]["credentials_file"].as_str().unwrap();
        // The file compose mounts the token secret at.
        let mounted = services["prometheus"]["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["target"] == token);
        assert!(mounted, "{token} is not mounted into prometheus");
        for group in job["static_configs"].as_array().unwrap() {
            for target in group["targets"].as_array().unwrap() {
                scraped.insert(target.as_str().unwrap().to_owned());
            }
        }
    }
    let mut instar = BTreeSet::new();
    for (name, svc) in services {
        let Some(cmd) = svc["command"].as_array() else {
            continue;
        };
        if svc["image"] != "instar:local" {
            continue;
        }
        let role = cmd[0].as_str().unwrap();
        let listen = svc["environment"]["INSTAR_LISTEN"].as_str().unwrap();
        let port = listen.rsplit_once(':').unwrap().1;
        instar.insert(format!("{name}:{port}"));
        // Healthy = ready, on the port it listens on.
        let test = svc["healthcheck"]["test"].as_array().unwrap();
        assert_eq!(test[1], "/usr/local/bin/instar", "{name}");
        assert_eq!(test[2], "probe", "{name}");
        assert_eq!(
            test[3],
            format!("http://127.0.0.1:{port}/health/ready"),
            "{name}"
        );
        assert!(["gateway", "social"].contains(&role), "{name} runs {role}");
        assert!(
            svc["environment"]["INSTAR_METRICS_TOKEN"].is_string(),
            "{name}"
        );
        // nginx waits for it.
        assert_eq!(
            services["nginx"]["depends_on"][name.as_str()]["condition"],
            "service_healthy",
            "{name}"
        );
    }
    assert_eq!(instar.len(), 4, "{instar:?}");
    assert_eq!(
        scraped, instar,
        "Prometheus scrapes exactly the Instar containers"
    );

    // nginx's configuration is what render.sh makes of the compose topology.
    let out = std::process::Command::new("bash")
        .arg(repo().join("deploy/nginx/render.sh"))
        .args([
            "--social",
            "social-1:8081",
            "--social",
            "social-2:8081",
            "--media-origin",
            "http://s3:9000/instar-media",
            "80",
            "gateway-1:8080",
            "gateway-2:8080",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(repo().join("deploy/compose/instar.conf")).unwrap();
    assert!(
        out.stdout == committed,
        "deploy/compose/instar.conf is stale: render it again (command in deploy/compose.yaml)"
    );
    // The media origin is the bucket s3-init creates, on the S3 service.
    let social_env = &services["social-1"]["environment"];
    assert_eq!(social_env["INSTAR_S3_BUCKET"], "instar-media");
    assert_eq!(social_env["INSTAR_S3_ENDPOINT"], "http://s3:9000");
    assert_eq!(
        services["nginx"]["networks"]["instar"]["ipv4_address"],
        social_env["INSTAR_TRUSTED_PROXIES"]
    );
}

/// nginx rendered with `--static` and `--tls` in front of one `instar serve` (as both the gateway
/// and the social upstream): the frontend over HTTPS with the SPA fallback and gzip copies, the
/// API and health proxied, curl checking the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_the_frontend_and_the_api_over_tls() {
    let Some(nginx) = scaleout_support::service("INSTAR_NGINX") else {
        return;
    };
    let (Some(openssl), Some(curl)) = (tool("openssl"), tool("curl")) else {
        return;
    };
    let dir = unique_dir("nginx-tls");
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><title>instar</title>\n",
    )
    .unwrap();
    std::fs::write(site.join("assets/app-1a2b3c4d.js"), "console.log(1)\n").unwrap();
    let mut gz = std::fs::File::create(site.join("assets/app-1a2b3c4d.js.gz")).unwrap();
    std::io::Write::write_all(&mut gz, b"GZ").unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = start().await;
    let port = scaleout_support::free_port();
    let _nginx = scaleout_support::Nginx::start_with(
        &nginx,
        port,
        &[
            "--social".into(),
            server.proc.addr.clone(),
            "--static".into(),
            site.display().to_string(),
            "--tls".into(),
            cert.display().to_string(),
            key.display().to_string(),
        ],
        std::slice::from_ref(&server.proc.addr),
    )
    .await;
    let get = |path: &str, extra: &[&str]| {
        let out = std::process::Command::new(&curl)
            .args(["-sS", "--http1.1", "-D", "-", "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    };
    let (status, head, body) = get("/", &[]);
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>instar</title>\n")
    );
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    let (status, _, body) = get("/profile/alice01", &[]);
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>instar</title>\n")
    );
    let (status, head, body) = get("/assets/app-1a2b3c4d.js", &["-H", "Accept-Encoding: gzip"]);
    assert_eq!((status, body.as_str()), (200, "GZ"));
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("max-age=31536000, immutable"), "{head}");
    for missing in ["/assets/missing-00000000.js", "/logo.png"] {
        let (status, _, body) = get(missing, &[]);
        assert_eq!(status, 404, "{missing}: {body}");
    }
    let (status, _, body) = get("/profile/kim.lee", &["-H", "Accept: text/html,*/*"]);
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>instar</title>\n")
    );
    // The API, health and SockJS info go to the process; their answers come back over TLS.
    let (status, _, body) = get(
        "/api/auth/checkId",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"id\":\"alice01\"}",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"code\""), "{body}");
    let (status, _, body) = get("/health/ready", &[]);
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = get("/ws/info", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("\"websocket\""), "{body}");
    // /metrics is not routed through nginx (the path is the frontend's like any other).
    let (_, _, body) = get("/metrics", &[]);
    assert!(!body.contains("instar_sessions_open"), "{body}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = unique_dir("units");
    std::fs::create_dir_all(&dir).unwrap();
    // The units name /usr/local/bin/instar, which verify requires to exist: point them at the
    // binary under test.
    let units = repo().join("deploy/systemd");
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("ExecStart") || text.contains("/health/ready"),
                "{} does not wait for readiness",
                path.display()
            );
            let text = text.replace("/usr/local/bin/instar", env!("CARGO_BIN_EXE_instar"));
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    for unit in [
        "instar-gateway@gw1.service",
        "instar-social@s1.service",
        "instar-serve.service",
        "instar.target",
    ] {
        let out = std::process::Command::new(&analyze)
            .arg("verify")
            .arg(dir.join(unit))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );
        if unit.ends_with(".service") {
            let out = std::process::Command::new(&analyze)
                .args(["security", "--offline=true", "--no-pager"])
                .arg(dir.join(unit))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let score: f64 = text
                .lines()
                .find_map(|l| l.split("Overall exposure level for ").nth(1))
                .and_then(|l| l.split(": ").nth(1))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{unit}: no exposure level in {text}"));
            eprintln!("{unit}: exposure {score}");
            assert!(score <= 2.0, "{unit}: exposure {score}\n{text}");
        }
    }
    // The nginx drop-in names units that exist.
    let dropin = std::fs::read_to_string(units.join("nginx.service.d/instar.conf")).unwrap();
    assert!(dropin.contains("After=instar.target"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A test that checks itself: a unit with a misspelt key fails the verify step above.
#[test]
fn systemd_verify_reports_a_bad_unit() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = unique_dir("bad-unit");
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("bad.service");
    std::fs::write(
        &unit,
        "[Service]\nExecStart=/bin/true\nProtectSystm=strict\n",
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSystm"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_links_only_glibc_and_runs_from_the_image_layout() {
    let script = repo().join("deploy/check-binary.sh");
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    let is_root = String::from_utf8_lossy(&root.stdout).trim() == "0";
    let rootfs = unique_dir("rootfs");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script);
    if is_root {
        cmd.arg("--rootfs").arg(&rootfs);
    } else {
        assert!(
            !ci(),
            "CI runs as root: the image layout check needs chroot"
        );
        eprintln!("note: not root; checking ldd only");
    }
    let out = cmd.arg(env!("CARGO_BIN_EXE_instar")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("links only: "));
    if is_root {
        assert!(stdout.contains("runs in"), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(&rootfs);
}

#[test]
fn check_binary_refuses_a_binary_with_other_libraries() {
    // Python links libz, libexpat and more on Debian: the check names them.
    let Some(python) = tool("python3") else {
        return;
    };
    let real = std::fs::canonicalize(python).unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo().join("deploy/check-binary.sh"))
        .arg(&real)
        .output()
        .unwrap();
    let ldd = std::process::Command::new("ldd")
        .arg(&real)
        .output()
        .unwrap();
    let others = String::from_utf8_lossy(&ldd.stdout).contains("libz.")
        || String::from_utf8_lossy(&ldd.stdout).contains("libexpat");
    if others {
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("links more than glibc"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_succeeds_fails_and_waits() {
    let probe = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_instar"))
            .arg("probe")
            .args(args)
            .stdout(Stdio::null())
            .output()
            .await
            .unwrap()
    };
    // Nothing listens yet: one attempt fails at once, naming the URL.
    let port = scaleout_support::free_port();
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let out = probe(vec![url.clone()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&url));
    // With --wait it keeps trying until the server is up and ready.
    let waiting = tokio::spawn(probe(vec!["--wait".into(), "60".into(), url.clone()]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let server = start_with(&[("INSTAR_LISTEN", format!("127.0.0.1:{port}"))]).await;
    let out = waiting.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Not 2xx: fails with the status line.
    let out = probe(vec![format!("http://127.0.0.1:{port}/no/such/page")]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered HTTP/1."));
    let out = probe(vec!["https://127.0.0.1/".into()]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
    drop(server);
}
