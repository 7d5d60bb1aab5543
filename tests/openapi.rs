//! The OpenAPI document of `/api` (social/src/openapi.rs):
//! * every route of the route table (`social/src/api.rs` and the route files of the features it
//!   names) is described, with its method, and nothing is described that the table lacks;
//! * `GET /api/openapi.json` and the `GET /api/docs` page are served by `instar serve`;
//! * schemathesis (scripts/test-clients) runs against `instar serve` on SQLite and finds no 5xx
//!   and no response that breaks the document.
#![allow(clippy::unwrap_used)]

mod flow_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flow_support::{account, start_with};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Paths served under `/api` that document the API rather than belong to it.
const DOCUMENTATION: [&str; 2] = ["/api/openapi.json", "/api/docs"];

/// The feature modules `social/src/api.rs` composes (its `use crate::{…}` line), without the
/// document's own module.
fn features() -> Vec<String> {
    let api = std::fs::read_to_string(repo().join("social/src/api.rs")).unwrap();
    let line = api
        .lines()
        .find(|l| l.starts_with("use crate::{"))
        .expect("api.rs names its features in one `use crate::{…}`");
    let inner = line
        .trim_start_matches("use crate::{")
        .trim_end_matches("};");
    inner
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "openapi")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The method of the first method filter at or after `from` in `text`.
fn method_after(text: &str, from: usize) -> Option<&'static str> {
    const FILTERS: [(&str, &str); 5] = [
        (".and(get())", "get"),
        (".and(warp::get())", "get"),
        (".and(warp::post())", "post"),
        (".and(warp::put())", "put"),
        (".and(warp::delete())", "delete"),
    ];
    FILTERS
        .iter()
        .filter_map(|(f, m)| text[from..].find(f).map(|i| (i, *m)))
        .min()
        .map(|(_, m)| m)
}

/// `(method, /api/path)` of every `warp::path!(…)` route in the features' source.
fn route_table() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    for f in features() {
        let dir = repo().join("social/src").join(&f);
        rust_files(&dir, &mut files);
        let file = repo().join(format!("social/src/{f}.rs"));
        if file.is_file() {
            files.push(file);
        }
    }
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut at = 0;
        while let Some(i) = text[at..].find("warp::path!(") {
            let start = at + i + "warp::path!(".len();
            let end = start + text[start..].find(')').unwrap();
            let segments: Vec<&str> = text[start..end]
                .split('/')
                .map(|s| s.trim().trim_matches('"'))
                .collect();
            let path = format!("/api/{}", segments.join("/"));
            let method = method_after(&text, end)
                .unwrap_or_else(|| panic!("no method filter after {path} in {}", file.display()));
            out.insert((method.to_owned(), path));
            at = end;
        }
    }
    out
}

fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head"].contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_described_and_nothing_else() {
    let doc: Value = serde_json::from_str(social::openapi::json_str()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let table = route_table();
    assert!(table.len() >= 40, "route scan found only {table:?}");
    let described = described(&doc);
    let missing: Vec<_> = table.difference(&described).collect();
    let extra: Vec<_> = described.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "routes not in the OpenAPI document: {missing:?}"
    );
    assert!(extra.is_empty(), "described but not routed: {extra:?}");
    // Every operation answers something, and protected ones say so; operation ids are unique and
    // every response has a description (both required by OpenAPI).
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operation id {id} repeated");
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
            }
            assert!(
                responses.contains_key("200") || responses.contains_key("302"),
                "{method} {path}"
            );
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_page_are_served_and_schemathesis_finds_nothing() {
    // Google sign-in configured (its endpoints on a closed port, so nothing is discovered at
    // start): unconfigured, its routes answer 503 `GNC` by design, which schemathesis rightly
    // counts as server errors; configured, their real answers are checked.
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
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/api/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/user/me"]["get"].is_object());

    let res = http
        .get(format!("{}/api/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script"), "the page loads no script");
    for (method, path) in described(&doc) {
        assert!(
            page.contains(&format!("id=\"{method}-{path}\"")),
            "{method} {path} missing from the page"
        );
    }
    for path in DOCUMENTATION {
        assert!(
            doc["paths"].get(path).is_none(),
            "{path} is not an API route"
        );
    }

    // schemathesis, installed by scripts/test next to INSTAR_PYTHON.
    let Ok(python) = std::env::var("INSTAR_PYTHON") else {
        assert!(!ci(), "INSTAR_PYTHON is not set: run through scripts/test");
        eprintln!("note: INSTAR_PYTHON is not set; skipping schemathesis");
        return;
    };
    let st = Path::new(&python).with_file_name("schemathesis");
    if !st.is_file() {
        assert!(
            !ci(),
            "{} not found: scripts/test installs it",
            st.display()
        );
        eprintln!("note: {} not found; skipping", st.display());
        return;
    }
    let token = account(&server.base, &server.log, &http, "schemathesis").await;
    let report = flow_support::unique_dir("schemathesis");
    std::fs::create_dir_all(&report).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&st)
            .current_dir(&report)
            .args([
                "--no-color",
                "run",
                &format!("{}/api/openapi.json", server.base),
                "--url",
                &server.base,
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--header",
                &format!("Authorization: Bearer {token}"),
                "--max-examples",
                "5",
                "--max-redirects",
                "0",
                "--seed",
                "26",
                "--phases",
                "examples,coverage,fuzzing",
                // One worker: with two, hypothesis parses lambda sources from two threads at
                // once and CPython 3.11's parser fails now and then ("AST constructor recursion
                // depth mismatch"), a runtime error of the tool rather than a finding.
                "--workers",
                "1",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finishes in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    let _ = std::fs::remove_dir_all(&report);
    assert!(out.status.success(), "schemathesis found problems (above)");
}
