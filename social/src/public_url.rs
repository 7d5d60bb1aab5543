//! The public URL: which origin (`scheme://host[:port]`) the media URLs in responses and pushes
//! carry.
//!
//! The database stores media as object keys ([`crate::media::Links`]); URLs are rendered when an
//! object leaves the service, always under one *canonical* origin so that everything rendered
//! once (the read cache's post views, kept feed pages, outbox rows, pushes) is the same bytes for
//! every client:
//!
//! * with `public_url` set (`INSTAR_PUBLIC_URL`), that is the canonical origin and every URL
//!   carries it, REST and STOMP alike;
//! * without it, the canonical origin is the address the process listens on, and a REST response
//!   to a request that reached the server under another name (its `Host`, or `X-Forwarded-Host`
//!   and `X-Forwarded-Proto` from a trusted proxy) has every JSON string that starts with the
//!   canonical origin rewritten to that name ([`relink`]), so a frontend on another origin loads
//!   images from the host it called. Only string values that *start* with the canonical origin
//!   followed by `/` are rewritten: a user's text can only be affected if it is itself a URL of
//!   this server, which then points at the same object under the name the client uses.
//!
//! Pushes have no request: they carry the canonical origin (set `public_url` when the listen
//! address is not what browsers use, e.g. behind a proxy or on `0.0.0.0`).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use ipnet::IpNet;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

/// Longest `Host` (or forwarded host) taken from a request; longer ones are ignored.
const MAX_HOST_LEN: usize = 255;

/// Where the public origin comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicUrl {
    /// The configured public URL (`INSTAR_PUBLIC_URL`, e.g. `https://api.example.com`): every URL
    /// is rendered under it and requests' own names are ignored.
    pub fixed: Option<String>,
    /// The canonical origin when none is configured: the listen address as a URL
    /// (`http://127.0.0.1:8080`), set by the binary once it is bound. `None` (library use without
    /// either) keeps media URLs relative (`/media/…`).
    pub fallback: Option<String>,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` are believed
    /// (`INSTAR_TRUSTED_PROXIES`); a request from any other peer is named by its `Host`.
    pub trusted_proxies: Vec<IpNet>,
}

impl PublicUrl {
    /// The canonical origin (`fixed`, else `fallback`), without a trailing slash.
    #[must_use]
    pub fn canonical(&self) -> Option<String> {
        self.fixed
            .as_deref()
            .or(self.fallback.as_deref())
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
    }

    /// Whether responses follow the name each request used (no fixed public URL, and a
    /// canonical origin to replace).
    #[must_use]
    pub fn per_request(&self) -> bool {
        self.fixed.is_none() && self.canonical().is_some()
    }

    /// The origin a listen address stands for: `http://{addr}`, with the unspecified addresses
    /// (`0.0.0.0`, `::`) replaced by loopback (a push then names this machine only; set
    /// `public_url` for other clients).
    #[must_use]
    pub fn origin_of_listen(addr: SocketAddr) -> String {
        let ip = match addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, addr.port()))
    }

    fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.is_trusted(canonical_ip(p.ip())))
    }

    /// The client of a request: the socket peer, or, when the peer is a trusted proxy, the
    /// `X-Forwarded-For` hops read from the right (the nearest proxy's entry first), skipping
    /// trusted proxies: the first other address is the client (values a client put in the header
    /// itself are further left and never reached). An unreadable hop ends the walk at the last
    /// address known. `None` without a peer.
    #[must_use]
    pub fn client_ip(&self, peer: Option<SocketAddr>, xff: Option<&str>) -> Option<IpAddr> {
        let mut client = canonical_ip(peer?.ip());
        if !self.is_trusted(client) {
            return Some(client);
        }
        let Some(xff) = xff else {
            return Some(client);
        };
        // At most 32 hops are read; a longer chain is cut (the header is bounded by the server's
        // header limits too).
        for hop in xff.rsplit(',').take(32) {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical_ip(ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The origin a request reached the server under: `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// (the last of their comma-separated values, the one the nearest proxy wrote) from a trusted
    /// proxy, else `http` and the `Host` header; `None` when the name is missing or not a plain
    /// host (only letters, digits, `.`, `-`, `:`, `[`, `]`, at most 255 bytes).
    #[must_use]
    pub fn request_origin(&self, peer: Option<SocketAddr>, names: &RequestNames) -> Option<String> {
        /// The last of a header's comma-separated values, trimmed; `None` when empty.
        fn last_value(v: Option<&str>) -> Option<&str> {
            v.and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        }
        let trusted = self.trusts(peer);
        let (fwd_proto, fwd_host) = if trusted {
            (
                last_value(names.forwarded_proto.as_deref()),
                last_value(names.forwarded_host.as_deref()),
            )
        } else {
            (None, None)
        };
        let scheme = match fwd_proto {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            Some(_) => return None,
            None => "http",
        };
        let host = match fwd_host {
            Some(h) => h,
            None => names.host.as_deref()?.trim(),
        };
        plain_host(host).then(|| format!("{scheme}://{}", host.to_ascii_lowercase()))
    }
}

/// The headers that name the server in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestNames {
    /// `Host`.
    pub host: Option<String>,
    /// `X-Forwarded-Host` (its first line).
    pub forwarded_host: Option<String>,
    /// `X-Forwarded-Proto` (its first line).
    pub forwarded_proto: Option<String>,
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// The rate-limit key of a client address: an IPv4 address as it is, an IPv6 address by its /64
/// (one subscriber's whole network: otherwise a single client would rotate through 2^64 keys).
#[must_use]
pub fn rate_key(ip: IpAddr) -> String {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A host (and port) safe to put into a URL and a JSON string as it is.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The socket peer of a request: the plain [`SocketAddr`] the HTTP accept loop puts in each
/// request's extensions (`gateway::listen`, which this crate cannot name; warp's own remote
/// address cannot be set from outside warp), or warp's (its test client's).
pub fn peer()
-> impl warp::Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::addr::remote()
        .and(warp::ext::optional::<SocketAddr>())
        .map(|warp: Option<SocketAddr>, ours: Option<SocketAddr>| ours.or(warp))
}

/// A filter extracting the origin to rewrite REST responses to (`None`: keep the canonical one).
/// With a fixed public URL it reads nothing from the request.
pub fn rewrite_target(public: &PublicUrl) -> BoxedFilter<(Option<String>,)> {
    if !public.per_request() {
        return warp::any().map(|| None).boxed();
    }
    let public = public.clone();
    let canonical = public.canonical().unwrap_or_default();
    peer()
        .and(warp::header::optional::<String>("host"))
        .and(warp::header::optional::<String>("x-forwarded-host"))
        .and(warp::header::optional::<String>("x-forwarded-proto"))
        .map(
            move |peer: Option<SocketAddr>,
                  host: Option<String>,
                  forwarded_host: Option<String>,
                  forwarded_proto: Option<String>| {
                let names = RequestNames {
                    host,
                    forwarded_host,
                    forwarded_proto,
                };
                public
                    .request_origin(peer, &names)
                    .filter(|o| *o != canonical)
            },
        )
        // A header that is not text names nothing: the canonical origin stays.
        .or(warp::any().map(|| None))
        .unify()
        .boxed()
}

/// `res` with every JSON string value that starts with `"{from}/` starting with `"{to}/` instead
/// (see the module documentation). Responses that are not JSON pass unchanged.
pub async fn relink(res: Response, from: &str, to: &str) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "reading a response to relink");
            parts.status = warp::http::StatusCode::INTERNAL_SERVER_ERROR;
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Response::from_parts(parts, Bytes::from_static(b"{\"code\":\"DE\"}").into());
        }
    };
    Response::from_parts(parts, replace_prefixes(bytes, from, to).into())
}

/// `body` with `"{from}/` replaced by `"{to}/` everywhere (the same bytes when none occurs).
#[must_use]
pub fn replace_prefixes(body: Bytes, from: &str, to: &str) -> Bytes {
    let needle = format!("\"{from}/");
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    let mut hits = finder.find_iter(&body).peekable();
    if hits.peek().is_none() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    for hit in hits {
        out.extend_from_slice(&body[at..=hit]);
        out.extend_from_slice(to.as_bytes());
        at = hit + 1 + from.len();
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(host: Option<&str>, fwd_host: Option<&str>, fwd_proto: Option<&str>) -> RequestNames {
        RequestNames {
            host: host.map(str::to_owned),
            forwarded_host: fwd_host.map(str::to_owned),
            forwarded_proto: fwd_proto.map(str::to_owned),
        }
    }

    #[test]
    fn only_string_values_starting_with_the_origin_are_rewritten() {
        let body = Bytes::from_static(
            b"{\"a\":\"http://127.0.0.1:8080/media/p/1\",\"b\":\"see http://127.0.0.1:8080/media/x\",\
              \"c\":[\"http://127.0.0.1:8080/media/q\"],\"d\":\"http://127.0.0.1:80800/x\"}",
        );
        let out = replace_prefixes(body, "http://127.0.0.1:8080", "https://api.example");
        assert_eq!(
            &out[..],
            &b"{\"a\":\"https://api.example/media/p/1\",\"b\":\"see http://127.0.0.1:8080/media/x\",\
              \"c\":[\"https://api.example/media/q\"],\"d\":\"http://127.0.0.1:80800/x\"}"[..]
        );
        let same = Bytes::from_static(b"{\"code\":\"SC\"}");
        assert_eq!(replace_prefixes(same.clone(), "http://h", "http://k"), same);
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let public = PublicUrl {
            fixed: None,
            fallback: Some("http://127.0.0.1:8080".into()),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap_or(IpNet::default())],
        };
        let h = names(
            Some("backend:8080"),
            Some("evil.example, api.example.com"),
            Some("https"),
        );
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap_or(([0, 0, 0, 0], 0).into());
        let stranger: SocketAddr = "192.0.2.7:5555".parse().unwrap_or(([0, 0, 0, 0], 0).into());
        assert_eq!(
            public.request_origin(Some(proxy), &h).as_deref(),
            Some("https://api.example.com")
        );
        assert_eq!(
            public.request_origin(Some(stranger), &h).as_deref(),
            Some("http://backend:8080")
        );
        let bad = names(Some("a\"b"), None, None);
        assert_eq!(public.request_origin(Some(stranger), &bad), None);
        assert_eq!(
            public.request_origin(Some(stranger), &RequestNames::default()),
            None
        );
    }

    #[test]
    fn client_addresses_come_through_trusted_proxies_only() {
        let proxies = PublicUrl {
            trusted_proxies: vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            ..PublicUrl::default()
        };
        let nginx: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        // What nginx's $proxy_add_x_forwarded_for makes of a client that sent its own header:
        // the spoofed values on the left, the real address last.
        let xff = "1.2.3.4, 5.6.7.8, 203.0.113.9";
        let ip = |peer, xff| proxies.client_ip(Some(peer), xff).unwrap().to_string();
        assert_eq!(ip(nginx, Some(xff)), "203.0.113.9");
        // Through two of our proxies.
        assert_eq!(
            ip(nginx, Some("1.2.3.4, 203.0.113.9, 10.0.0.2")),
            "203.0.113.9"
        );
        // From anyone else the header means nothing.
        assert_eq!(ip(stranger, Some(xff)), "198.51.100.7");
        assert_eq!(ip(nginx, None), "127.0.0.1");
        assert_eq!(ip(nginx, Some("junk, 203.0.113.9")), "203.0.113.9");
        assert_eq!(ip(nginx, Some("203.0.113.9, junk")), "127.0.0.1");
        // Nothing is trusted by default.
        assert_eq!(
            PublicUrl::default()
                .client_ip(Some(nginx), Some(xff))
                .unwrap()
                .to_string(),
            "127.0.0.1"
        );
        // IPv6 clients are grouped by /64; mapped IPv4 is IPv4.
        assert_eq!(
            rate_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            rate_key("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(rate_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
    }

    #[test]
    fn a_fixed_public_url_wins() {
        let public = PublicUrl {
            fixed: Some("https://api.example.com/".into()),
            fallback: Some("http://127.0.0.1:1".into()),
            trusted_proxies: Vec::new(),
        };
        assert_eq!(
            public.canonical().as_deref(),
            Some("https://api.example.com")
        );
        assert!(!public.per_request());
        assert_eq!(
            PublicUrl::origin_of_listen("0.0.0.0:8080".parse().unwrap_or(([0, 0, 0, 0], 0).into())),
            "http://127.0.0.1:8080"
        );
    }
}
