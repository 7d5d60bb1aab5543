//! The OpenAPI 3.1 document of the `/api` routes, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types' `ToSchema` derives, served at `GET /api/openapi.json`, and a
//! readable page of it at `GET /api/docs` (rendered here from the document: no scripts, nothing
//! loaded from elsewhere, so it works offline).
//!
//! What every route shares is added once by [`Shared`]: the bearer-token scheme, and the
//! envelope's refusals (400 `BR`, 401 `AV` on protected routes, 429 `TMR`, 500 and 503 `DE`)
//! where a route does not describe its own.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder, content::ContentBuilder};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Instar social API",
        description = "The REST routes of the social service (`/api/**`). Every answer is a flat JSON \
            object with a `code` (`SC` on success) and the route's fields beside it; protected routes \
            need `Authorization: Bearer <jwt>` from `/api/auth/signIn`. Behaviour and differences from \
            the original backend: docs/api.md.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::accounts::routes::sign_up,
        crate::accounts::routes::sign_in,
        crate::accounts::routes::sign_out_everywhere,
        crate::accounts::routes::check_id,
        crate::accounts::routes::send_email,
        crate::accounts::google::login_url,
        crate::accounts::google::start,
        crate::accounts::google::callback,
        crate::accounts::google::oauth_sign_up,
        crate::users::routes::me,
        crate::users::routes::follow,
        crate::users::routes::un_follow,
        crate::users::routes::search,
        crate::users::routes::details,
        crate::users::routes::recommend,
        crate::users::routes::get_edit_info,
        crate::users::routes::edit_info,
        crate::users::routes::edit_password,
        crate::users::routes::upload_profile,
        crate::posts::routes::create,
        crate::posts::routes::list,
        crate::posts::routes::details,
        crate::posts::routes::like,
        crate::posts::routes::comment,
        crate::posts::routes::top_list,
        crate::posts::routes::comment_page,
        crate::posts::routes::view_history,
        crate::feed::routes::feed,
        crate::feed::batch::trigger,
        crate::alarms::routes::list,
        crate::chat::routes::list,
        crate::chat::routes::create,
        crate::chat::routes::recommend,
        crate::chat::routes::history,
        crate::chat::routes::read_info,
        crate::chat::routes::group_image,
        crate::chat::routes::group_title,
        crate::chat::routes::members_info,
        crate::chat::routes::invite_search,
        crate::chat::routes::invite_user,
        crate::chat::routes::leave_room,
        crate::chat::routes::upload_chat,
    ),
    components(schemas(crate::http::doc::Refused)),
    modifiers(&Shared),
)]
struct ApiDoc;

/// Paths served by one handler under a second name: (described path, other path).
const ALIASES: [(&str, &str); 1] = [("/api/batch/run_scheduler", "/api/auth/test")];

/// The refusals every route may answer: (status, description, protected routes only).
const SHARED_REFUSALS: [(&str, &str, bool); 5] = [
    (
        "400",
        "`BR`: malformed input (bad JSON, a missing or mistyped field or query parameter, a body that is not JSON where JSON is expected)",
        false,
    ),
    ("401", "`AV`: no, malformed or expired bearer token", true),
    (
        "429",
        "`TMR`: too many requests (a rate limit or quota)",
        false,
    ),
    ("500", "`DE`: a database or storage failure", false),
    (
        "503",
        "`DE`: password hashing is saturated, try again shortly",
        false,
    ),
];

/// Adds what every operation shares (see the module's documentation).
struct Shared;

impl utoipa::Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                // Handler names repeat across features (`list`, `details`): operation ids must be
                // unique, so they are qualified by the feature's tag.
                if let (Some(id), Some(tag)) = (
                    op.operation_id.as_ref(),
                    op.tags.as_ref().and_then(|t| t.first()),
                ) {
                    op.operation_id = Some(format!("{tag}_{id}"));
                }
                // Every response object needs a description.
                for (status, response) in &mut op.responses.responses {
                    if let RefOr::T(r) = response
                        && r.description.is_empty()
                    {
                        r.description = match status.as_bytes().first() {
                            Some(b'2') => "success",
                            Some(b'3') => "redirect",
                            _ => "refused",
                        }
                        .to_owned();
                    }
                }
                let protected = op.security.as_ref().is_some_and(|s| !s.is_empty());
                for (status, description, auth_only) in SHARED_REFUSALS {
                    if (auth_only && !protected) || op.responses.responses.contains_key(status) {
                        continue;
                    }
                    let refused = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Refused")))
                                .build(),
                        )
                        .build();
                    op.responses
                        .responses
                        .insert(status.to_owned(), RefOr::T(refused));
                }
            }
        }
        for (described, alias) in ALIASES {
            if let Some(item) = doc.paths.paths.get(described).cloned() {
                let mut item = item;
                for op in operations(&mut item) {
                    op.operation_id = op.operation_id.as_ref().map(|id| format!("{id}_alias"));
                }
                doc.paths.paths.insert(alias.to_owned(), item);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The method names the document uses, in the order the page lists them.
pub const METHODS: [(HttpMethod, &str); 6] = [
    (HttpMethod::Get, "get"),
    (HttpMethod::Put, "put"),
    (HttpMethod::Post, "post"),
    (HttpMethod::Delete, "delete"),
    (HttpMethod::Patch, "patch"),
    (HttpMethod::Head, "head"),
];

/// The document as a value.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, rendered once.
pub fn json() -> &'static bytes::Bytes {
    static JSON: OnceLock<bytes::Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        bytes::Bytes::from(
            document()
                .to_pretty_json()
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        )
    })
}

/// The document as JSON text.
pub fn json_str() -> &'static str {
    std::str::from_utf8(json()).unwrap_or("{}")
}

/// The docs page, rendered once.
fn page() -> &'static bytes::Bytes {
    static PAGE: OnceLock<bytes::Bytes> = OnceLock::new();
    PAGE.get_or_init(|| {
        let doc = serde_json::from_slice::<Value>(json()).unwrap_or(Value::Null);
        bytes::Bytes::from(render(&doc))
    })
}

/// `GET /api/openapi.json` and `GET /api/docs` (paths relative to `/api`).
pub fn routes() -> BoxedFilter<(Response,)> {
    let spec = warp::path!("openapi.json")
        .and(crate::http::get())
        .map(|| serve(json().clone(), "application/json"));
    let docs = warp::path!("docs")
        .and(crate::http::get())
        .map(|| serve(page().clone(), "text/html; charset=utf-8"));
    spec.or(docs).unify().boxed()
}

fn serve(body: bytes::Bytes, content_type: &'static str) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    res
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A schema, `$ref`s shown as links to the schema's section.
fn schema_html(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    format!(
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(v).unwrap_or_default())
    )
}

/// The page: one section per operation (method, path, description, parameters, body,
/// responses), then the schemas.
fn render(doc: &Value) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = doc
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("API");
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         h2{{margin-top:2.5rem;font-size:1.1rem;border-bottom:1px solid #ccc}}code,pre{{background:#f4f4f4}}\
         pre{{padding:.5rem;overflow:auto;font-size:13px}}.m{{font-weight:bold;text-transform:uppercase}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2rem .5rem;vertical-align:top;text-align:left}}</style>\
         </head><body><h1>{t}</h1><p>{d}</p><p>The document: <a href=\"openapi.json\">openapi.json</a> (OpenAPI {v}).</p><ul>",
        t = esc(title),
        d = esc(doc
            .pointer("/info/description")
            .and_then(Value::as_str)
            .unwrap_or("")),
        v = esc(doc.get("openapi").and_then(Value::as_str).unwrap_or("")),
    );
    let empty = serde_json::Map::new();
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (_, method) in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((path.as_str(), method, op));
            }
        }
    }
    for (path, method, _) in &ops {
        let _ = write!(
            out,
            "<li><a href=\"#{method}-{id}\"><span class=\"m\">{method}</span> {p}</a></li>",
            id = esc(path),
            p = esc(path)
        );
    }
    out.push_str("</ul>");
    for (path, method, op) in &ops {
        let _ = write!(
            out,
            "<h2 id=\"{method}-{id}\"><span class=\"m\">{method}</span> <code>{p}</code>{lock}</h2>",
            id = esc(path),
            p = esc(path),
            lock = if op.get("security").is_some() {
                " (bearer token)"
            } else {
                ""
            }
        );
        for key in ["summary", "description"] {
            if let Some(text) = op.get(key).and_then(Value::as_str) {
                let _ = write!(out, "<p>{}</p>", esc(text));
            }
        }
        if let Some(params) = op.get("parameters").and_then(Value::as_array) {
            out.push_str("<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th><th>description</th></tr>");
            for p in params {
                let s = |k: &str| esc(p.get(k).and_then(Value::as_str).unwrap_or(""));
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    s("name"),
                    s("in"),
                    p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    schema_html(p.get("schema").unwrap_or(&Value::Null)),
                    s("description"),
                );
            }
            out.push_str("</table>");
        }
        if let Some(content) = op
            .pointer("/requestBody/content")
            .and_then(Value::as_object)
        {
            for (media, c) in content {
                let _ = write!(
                    out,
                    "<p>Body <code>{}</code>: {}</p>",
                    esc(media),
                    schema_html(c.get("schema").unwrap_or(&Value::Null))
                );
            }
        }
        if let Some(responses) = op.get("responses").and_then(Value::as_object) {
            out.push_str("<table><tr><th>status</th><th>description</th><th>body</th></tr>");
            for (status, r) in responses {
                let mut bodies = String::new();
                if let Some(content) = r.get("content").and_then(Value::as_object) {
                    for (media, c) in content {
                        let _ = write!(
                            bodies,
                            "<code>{}</code> {} ",
                            esc(media),
                            schema_html(c.get("schema").unwrap_or(&Value::Null))
                        );
                    }
                }
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(status),
                    esc(r.get("description").and_then(Value::as_str).unwrap_or("")),
                    bodies
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for (name, s) in schemas {
            let _ = write!(
                out,
                "<h3 id=\"schema-{n}\">{n}</h3><pre>{s}</pre>",
                n = esc(name),
                s = esc(&serde_json::to_string_pretty(s).unwrap_or_default())
            );
        }
    }
    out.push_str("</body></html>");
    out
}
