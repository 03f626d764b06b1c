//! Routing: method + path, query, headers and body → domain values, and
//! every refusal → status + reason in one place. Plain responses are written
//! here from tiny_http's `Header` and `StatusCode`; event streams go to
//! `stream.rs`; who may do what is `access.rs`'s.
//! No business rules beyond checking input.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tiny_http::{Header, Method, StatusCode};

use crate::access::cors_fields;
use crate::access::{Access, Denied};
use crate::config::Config;
use crate::event::{self, EventId, Selector, TopicFilter};
use crate::hangup::Hangups;
use crate::hub::{Hub, Listed, Peer, PublishError, SubscribeError};
use crate::quiet::Quiet;
use crate::request::{shown, Conn, Framing, Head, RequestError};
use crate::stream::{self, StreamParams};

/// A request head must arrive within this (SPEC "Hostile input"); the same
/// bound closes a keep-alive connection that stays idle.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must arrive within this once its head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// `topic=` a subscription may give: each costs every fan-out a little.
const MAX_TOPICS: usize = 64;
/// Streams one `GET /subscriptions` lists at most; more is `"truncated"`.
const MAX_LISTED: usize = 10_000;

const PAGE: &str = include_str!("index.html");
/// The page may run only its own inline script and style, named by their
/// SHA-256 (a test below recomputes them), and connect only to this hub.
const PAGE_CSP: &str = "default-src 'none'; \
    script-src 'sha256-ZfHpBJw7PZ6ZMTZdMS64BWoKAcVWwpIy79ymFAybYGk='; \
    style-src 'sha256-G/orvONol+I064mvXyucWfuvXzPseabpid4amfoxx/U='; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What every connection thread shares.
pub struct App {
    /// Shared with the follower of a shared log.
    pub hub: Arc<Hub>,
    pub config: Config,
    pub hangups: Hangups,
    /// Refusals are logged at most a few a second: anyone can send
    /// thousands, and stderr is written synchronously.
    pub refusal_log: Quiet,
    pub access: Access,
}

/// A plain (non-stream) response.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// Close the connection after answering (the body was not read, or the
    /// framing cannot be trusted).
    close: bool,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            close: false,
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::new(status, "application/json", value.to_string())
    }

    fn text(status: u16, text: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", format!("{text}\n"))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn closing(mut self) -> Reply {
        self.close = true;
        self
    }
}

/// A refused request: its status, the reason told to the client and logged,
/// and whether the connection must close.
struct Refusal {
    status: u16,
    reason: String,
    close: bool,
    retry_after: bool,
    /// `WWW-Authenticate` (RFC 6750) of a 401 or a 403.
    challenge: Option<String>,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            close: false,
            retry_after: false,
            challenge: None,
        }
    }
}

impl From<Denied> for Refusal {
    fn from(d: Denied) -> Refusal {
        Refusal {
            challenge: d.challenge,
            ..Refusal::new(d.status, d.reason)
        }
    }
}

impl From<RequestError> for Refusal {
    fn from(e: RequestError) -> Refusal {
        Refusal {
            status: e.status(),
            reason: e.reason().to_string(),
            // After a framing or size error the rest of the connection
            // cannot be trusted to hold a next request.
            close: true,
            retry_after: false,
            challenge: None,
        }
    }
}

/// Writes a plain response in one write; returns whether the connection
/// stays open for a next request. Each field is a tiny_http `Header`; the
/// head is written here because tiny_http's `Response` drops `Connection`.
fn send(conn: &mut Conn, head: Option<&Head>, reply: Reply) -> bool {
    let close = reply.close || head.is_none_or(|h| h.http10 || h.wants_close());
    let head_only = head.is_some_and(|h| h.method == Method::Head);
    let status = StatusCode(reply.status);
    // RFC 9110: no content, and no Content-Length, in 1xx, 204 and 304.
    let no_content = matches!(reply.status, 100..=199 | 204 | 304);
    let version = if head.is_some_and(|h| h.http10) {
        "1.0"
    } else {
        "1.1"
    };
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let _ = write!(
        out,
        "HTTP/{version} {} {}\r\n",
        status.0,
        status.default_reason_phrase()
    );
    let mut field = |name: &str, value: &str| {
        let h = Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header");
        let _ = write!(out, "{h}\r\n");
    };
    field("Date", &httpdate::fmt_http_date(SystemTime::now()));
    field("Server", concat!("ssehub/", env!("CARGO_PKG_VERSION")));
    if !no_content {
        field("Content-Type", reply.content_type);
        field("Content-Length", &reply.body.len().to_string());
    }
    for (name, value) in &reply.headers {
        field(name, value);
    }
    if close {
        field("Connection", "close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !no_content {
        out.extend_from_slice(&reply.body);
    }
    conn.stream.write_all(&out).is_ok() && !close
}

/// Serves requests on one connection until it closes or becomes a stream.
pub fn serve_connection(stream: TcpStream, app: &App) {
    let mut conn = Conn::new(stream);
    loop {
        let head = match conn.read_head(Instant::now() + HEAD_TIMEOUT) {
            Ok(head) => head,
            Err(RequestError::Closed) => return,
            Err(e) => {
                let _ = refuse(&mut conn, None, None, app, e.into());
                return;
            }
        };
        match route(conn, head, app) {
            Some(open) => conn = open,
            None => return,
        }
    }
}

/// What a request asks for, once its method and path are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Subscribe,
    Publish,
    /// `DELETE /events`: end a topic.
    EndTopic,
    Subscriptions,
    /// `DELETE /subscriptions/ID`.
    EndSubscription,
    Preflight,
    Page,
    Health,
    Metrics,
}

impl Endpoint {
    /// Routes by method and path alone: an unknown path is 404 and a known
    /// one with another method 405, whatever body the request declares
    /// (SPEC "Other routes").
    fn of(method: &Method, path: &str, cors: bool) -> Result<Endpoint, Refusal> {
        Ok(match (method, path) {
            (Method::Get, "/events") => Endpoint::Subscribe,
            (Method::Post, "/events") => Endpoint::Publish,
            (Method::Delete, "/events") => Endpoint::EndTopic,
            (Method::Get | Method::Head, "/subscriptions") => Endpoint::Subscriptions,
            (Method::Delete, p) if p.starts_with("/subscriptions/") => Endpoint::EndSubscription,
            (Method::Options, "/events") if cors => Endpoint::Preflight,
            (Method::Get | Method::Head, "/") => Endpoint::Page,
            (Method::Get | Method::Head, "/healthz") => Endpoint::Health,
            (Method::Get | Method::Head, "/metrics") => Endpoint::Metrics,
            (_, "/events" | "/" | "/healthz" | "/metrics" | "/subscriptions") => {
                return Err(Refusal::new(405, "method not allowed"))
            }
            (_, p) if p.starts_with("/subscriptions/") => {
                return Err(Refusal::new(405, "method not allowed"))
            }
            _ => return Err(Refusal::new(404, "not found")),
        })
    }

    /// The largest body the endpoint takes; a longer declared one is 413
    /// before a byte of it is read.
    fn body_limit(self, config: &Config) -> usize {
        match self {
            Endpoint::Publish | Endpoint::EndTopic => config.max_event_bytes,
            _ => 0,
        }
    }
}

/// Answers one request; gives the connection back if it stays open.
fn route(mut conn: Conn, head: Head, app: &App) -> Option<Conn> {
    let (path, query) = split_target(&head.target);
    let events = path == "/events";
    let framing = head.framing();
    // A refused request's body is not read, so the connection cannot be
    // trusted to hold a next request after it.
    let body_unread = !matches!(framing, Ok(Framing::None | Framing::Length(0)));
    // Framing first: RFC 9112 §6.3 makes a malformed length a 400 that
    // closes the connection, whatever the route. Then the Host, the route,
    // and the declared size against what that route takes.
    let checked = framing.map_err(Refusal::from).and_then(|framing| {
        app.access.check_host(&head).map_err(Refusal::from)?;
        let endpoint = Endpoint::of(&head.method, path, app.config.cors_origin.is_some())?;
        match framing {
            Framing::Length(n) if n > endpoint.body_limit(&app.config) as u64 => {
                Err(RequestError::BodyTooLarge.into())
            }
            framing => Ok((endpoint, framing)),
        }
    });
    let reply = match checked {
        Err(refusal) => Err(refusal),
        Ok((endpoint, framing)) => match endpoint {
            Endpoint::Subscribe => return subscribe(conn, &head, framing, query, app),
            Endpoint::Publish => publish(&mut conn, &head, framing, query, app, false),
            Endpoint::EndTopic => publish(&mut conn, &head, framing, query, app, true),
            Endpoint::Subscriptions => {
                bodyless(&mut conn, framing).and_then(|()| subscriptions(&conn, &head, query, app))
            }
            Endpoint::EndSubscription => bodyless(&mut conn, framing)
                .and_then(|()| end_subscription(&conn, &head, path, app)),
            Endpoint::Preflight => bodyless(&mut conn, framing).map(|()| preflight()),
            Endpoint::Page => bodyless(&mut conn, framing).map(|()| {
                Reply::new(200, "text/html; charset=utf-8", PAGE)
                    .header("Content-Security-Policy", PAGE_CSP)
                    .header("X-Content-Type-Options", "nosniff")
            }),
            Endpoint::Health => bodyless(&mut conn, framing).map(|()| {
                // A hub whose shared log is down still serves its open
                // streams, but cannot publish: a load balancer should prefer
                // another.
                if app.hub.log_up() {
                    Reply::text(200, "ok")
                } else {
                    Reply::text(503, "event log down")
                }
            }),
            Endpoint::Metrics => bodyless(&mut conn, framing).map(|()| {
                Reply::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    app.hub.metrics.render(&app.hub.gauges()),
                )
            }),
        },
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(refusal) => {
            let allow = match path {
                "/events" if app.config.cors_origin.is_some() => "GET, POST, DELETE, OPTIONS",
                "/events" => "GET, POST, DELETE",
                p if p.starts_with("/subscriptions/") => "DELETE",
                _ => "GET, HEAD",
            };
            let close = refusal.close || body_unread;
            let refusal = Refusal { close, ..refusal };
            let with_allow = (refusal.status == 405).then_some(allow);
            return refuse(&mut conn, Some(&head), with_allow, app, refusal).then_some(conn);
        }
    };
    let reply = if events { with_cors(reply, app) } else { reply };
    send(&mut conn, Some(&head), reply).then_some(conn)
}

/// Sends a refusal: JSON `{"error"}` on `POST` and `DELETE`, plain text
/// elsewhere.
/// Returns whether the connection stays open.
fn refuse(
    conn: &mut Conn,
    head: Option<&Head>,
    allow: Option<&str>,
    app: &App,
    refusal: Refusal,
) -> bool {
    let (method, path) = head.map_or(("-".into(), "-".into()), |h| {
        (h.method.to_string(), shown(split_target(&h.target).0))
    });
    if let Some(more) = app.refusal_log.due(Instant::now()) {
        let peer = conn
            .stream
            .peer_addr()
            .map_or_else(|_| "-".into(), |a| a.to_string());
        log::info!(
            "refused {method} {path} from {peer}: {} {}{more}",
            refusal.status,
            refusal.reason
        );
    }
    crate::metrics::Metrics::add(&app.hub.metrics.refused, 1);
    let publishing = head.is_some_and(|h| matches!(h.method, Method::Post | Method::Delete));
    let mut reply = if publishing {
        Reply::json(
            refusal.status,
            serde_json::json!({ "error": refusal.reason }),
        )
    } else {
        Reply::text(refusal.status, &refusal.reason)
    };
    if let Some(allow) = allow {
        reply = reply.header("Allow", allow);
    }
    if refusal.retry_after {
        reply = reply.header("Retry-After", "1");
    }
    if let Some(challenge) = refusal.challenge {
        reply = reply.header("WWW-Authenticate", challenge);
    }
    if refusal.close {
        reply = reply.closing();
    }
    if head.is_some_and(|h| split_target(&h.target).0 == "/events") {
        reply = with_cors(reply, app);
    }
    send(conn, head, reply)
}

fn with_cors(reply: Reply, app: &App) -> Reply {
    cors_fields(app.config.cors_origin.as_deref())
        .fold(reply, |reply, (name, value)| reply.header(name, value))
}

fn preflight() -> Reply {
    Reply::new(204, "text/plain", "")
        .header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
        .header(
            "Access-Control-Allow-Headers",
            "Last-Event-ID, Authorization, Content-Type",
        )
        .header("Access-Control-Max-Age", "86400")
}

/// Routes other than `POST /events` take no body: a chunked one that is
/// not empty is refused with 413 at its first chunk.
fn bodyless(conn: &mut Conn, framing: Framing) -> Result<(), Refusal> {
    let deadline = Instant::now() + BODY_TIMEOUT;
    conn.read_body(framing, 0, deadline)?;
    Ok(())
}

/// `/path?query` → (`/path`, `query`); an absolute-form target keeps only
/// its path.
fn split_target(target: &str) -> (&str, &str) {
    let target = match crate::access::absolute_form(target) {
        Some((_, "")) => "/",
        Some((_, rest)) if rest.starts_with('?') => return ("/", &rest[1..]),
        Some((_, rest)) => rest,
        None => target,
    };
    target.split_once('?').unwrap_or((target, ""))
}

/// Decodes an `application/x-www-form-urlencoded` query into pairs.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, &'static str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| bytes[i + 1].is_ascii_hexdigit())
                    .ok_or("malformed percent-encoding in the query")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "query is not UTF-8")
}

/// `POST /events`, or with `end` `DELETE /events` (SPEC "Ending a topic"):
/// the same grants and checks; the end takes no `event=` and may have no
/// body.
fn publish(
    conn: &mut Conn,
    head: &Head,
    framing: Framing,
    query: &str,
    app: &App,
    end: bool,
) -> Result<Reply, Refusal> {
    let cfg = &app.config;
    let grants = app.access.publisher(head)?;
    let mut topic = None;
    let mut name = None;
    for (k, v) in parse_query(query).map_err(|e| Refusal::new(400, e))? {
        let slot = match k.as_str() {
            "topic" => &mut topic,
            "event" if end => {
                return Err(Refusal::new(
                    400,
                    "the end of a topic is ssehub:closed: no event=",
                ))
            }
            "event" => &mut name,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(Refusal::new(400, format!("{k} given more than once")));
        }
    }
    let topic = topic.unwrap_or_else(|| "default".into());
    match Selector::parse(&topic).map_err(|e| Refusal::new(400, e))? {
        Selector::Topic(_) => {}
        _ => {
            return Err(Refusal::new(
                400,
                "topic is a selector: publish to one topic",
            ))
        }
    }
    grants.publish_to(&topic)?;
    if let Some(name) = &name {
        event::check_event_name(name).map_err(|e| Refusal::new(400, e))?;
    }
    if framing == Framing::None && !end {
        return Err(Refusal::new(411, "Content-Length or chunked body required"));
    }
    match head.single("Expect") {
        // RFC 9110 §10.1.1: an HTTP/1.0 client cannot expect anything.
        _ if head.http10 => {}
        Ok(None) => {}
        Ok(Some(v)) if v.eq_ignore_ascii_case("100-continue") => {
            conn.send_continue().map_err(|_| RequestError::Closed)?;
        }
        _ => return Err(Refusal::new(417, "unsupported Expect")),
    }
    let deadline = Instant::now() + BODY_TIMEOUT;
    let body = conn.read_body(framing, cfg.max_event_bytes, deadline)?;
    let data = String::from_utf8(body).map_err(|_| Refusal::new(400, "body is not UTF-8"))?;
    let published = match end {
        true => app.hub.end_topic(&topic, &data),
        false => app.hub.publish(&topic, name.as_deref(), &data),
    };
    match published {
        Ok(p) => Ok(Reply::json(
            200,
            serde_json::json!({
                "id": p.id.to_string(),
                "topic": topic,
                "receivers": p.receivers,
            }),
        )),
        Err(PublishError::Closed) => Err(Refusal {
            retry_after: true,
            ..Refusal::new(503, "shutting down")
        }),
        Err(PublishError::Unavailable(e)) => Err(Refusal {
            retry_after: true,
            ..Refusal::new(503, e.to_string())
        }),
        Err(PublishError::TopicClosed) => Err(Refusal::new(410, "topic closed")),
    }
}

fn observer(conn: &Conn, head: &Head, app: &App) -> Result<(), Refusal> {
    let loopback = conn
        .stream
        .peer_addr()
        .is_ok_and(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback());
    app.access.observer(head, loopback)?;
    Ok(())
}

/// `GET /subscriptions[?topic=SELECTOR]`: this process's open streams.
fn subscriptions(conn: &Conn, head: &Head, query: &str, app: &App) -> Result<Reply, Refusal> {
    observer(conn, head, app)?;
    let mut selector = None;
    for (k, v) in parse_query(query).map_err(|e| Refusal::new(400, e))? {
        if k == "topic" {
            let parsed = Selector::parse(&v).map_err(|e| Refusal::new(400, e))?;
            if selector.replace(parsed).is_some() {
                return Err(Refusal::new(400, "topic given more than once"));
            }
        }
    }
    let (listed, truncated) = app.hub.subscriptions(selector.as_ref(), MAX_LISTED);
    let list: Vec<serde_json::Value> = listed.iter().map(listed_json).collect();
    let mut body = serde_json::json!({ "subscriptions": list });
    if truncated {
        body["truncated"] = true.into();
    }
    Ok(Reply::json(200, body).header("Cache-Control", "no-store"))
}

fn listed_json(l: &Listed) -> serde_json::Value {
    serde_json::json!({
        "id": l.id.to_string(),
        "topics": l.topics,
        "sub": l.peer.sub,
        "address": l.peer.address.map(|a| a.to_string()),
        "since": rfc3339(l.since),
        "last_event_id": l.last_event_id.map(|id| id.to_string()),
        "behind": l.behind,
    })
}

/// `DELETE /subscriptions/ID`.
fn end_subscription(conn: &Conn, head: &Head, path: &str, app: &App) -> Result<Reply, Refusal> {
    observer(conn, head, app)?;
    let id = path.strip_prefix("/subscriptions/").unwrap_or("");
    let ended = id
        .parse::<u64>()
        .ok()
        .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
        .is_some_and(|id| app.hub.end_subscription(id));
    if !ended {
        return Err(Refusal::new(404, "no such subscription"));
    }
    Ok(Reply::json(200, serde_json::json!({ "ended": id })))
}

/// `t` as RFC 3339 in UTC, to the second: `2025-11-24T16:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms"), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Validates a subscription and turns the connection into its stream.
fn subscribe(
    mut conn: Conn,
    head: &Head,
    framing: Framing,
    query: &str,
    app: &App,
) -> Option<Conn> {
    type Checked = (TopicFilter, Option<EventId>, Option<u64>, Option<String>);
    let checked = (|| -> Result<Checked, Refusal> {
        bodyless(&mut conn, framing)?;
        let pairs = parse_query(query).map_err(|e| Refusal::new(400, e))?;
        let mut topics: Vec<Selector> = Vec::new();
        let mut query_id = None;
        for (k, v) in &pairs {
            match k.as_str() {
                "topic" => {
                    if topics.len() == MAX_TOPICS {
                        return Err(Refusal::new(400, format!("more than {MAX_TOPICS} topics")));
                    }
                    let topic = Selector::parse(v).map_err(|e| Refusal::new(400, e))?;
                    if !topics.contains(&topic) {
                        topics.push(topic);
                    }
                }
                // Empty is absent, as for the header.
                "lastEventId" => query_id = Some(v.clone()).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        let grants = app.access.subscriber(head, &pairs)?;
        let filter = grants.subscription(&topics)?;
        if let Some(sub) = &grants.sub {
            log::debug!("subscriber sub={}", shown(sub));
        }
        // The header wins: a reconnecting EventSource sends it while its URL
        // still carries the id the page started from.
        let header_id = head.single("Last-Event-ID")?.filter(|v| !v.is_empty());
        let last = match header_id.map(str::to_owned).or(query_id) {
            Some(id) => Some(
                id.parse::<EventId>()
                    .map_err(|e| Refusal::new(400, format!("malformed Last-Event-ID: {e}")))?,
            ),
            None => None,
        };
        Ok((filter, last, grants.exp, grants.sub))
    })();
    let refusal = match checked {
        Ok((topics, last, expires, sub)) => {
            let fields: Vec<(&'static str, String)> =
                cors_fields(app.config.cors_origin.as_deref())
                    .map(|(name, value)| (name, value.to_string()))
                    .collect();
            let params = StreamParams {
                http10: head.http10,
                retry_ms: app.config.retry_ms,
                heartbeat: app.config.heartbeat,
                fields: &fields,
                last_event_id: last,
                expires,
                hangups: &app.hangups,
            };
            let fd = std::os::fd::AsRawFd::as_raw_fd(&conn.stream);
            let peer = Peer {
                sub,
                address: conn.stream.peer_addr().ok(),
            };
            match app.hub.subscribe(topics, last, fd, peer) {
                Ok(sub) => {
                    log::debug!("stream opened ({} open)", app.hub.gauges().subscribers);
                    stream::serve(conn.into_stream(), sub, &params);
                    log::debug!("stream closed");
                    return None;
                }
                Err(SubscribeError::Closed) => {
                    // Not a 503: EventSource never retries after one, and
                    // this client should reconnect to the next hub.
                    retry_later(conn, app, &params, "shutting down");
                    return None;
                }
                Err(SubscribeError::Ended) => {
                    // SPEC "Ending a topic": EventSource does not reconnect
                    // after a 204.
                    log::debug!("subscription to ended topics answered 204");
                    let reply = with_cors(Reply::new(204, "text/plain", ""), app);
                    return send(&mut conn, Some(head), reply).then_some(conn);
                }
                Err(SubscribeError::Full) => Refusal {
                    retry_after: true,
                    close: true,
                    ..Refusal::new(503, "too many subscribers")
                },
            }
        }
        Err(refusal) => refusal,
    };
    refuse(&mut conn, Some(head), None, app, refusal).then_some(conn)
}

/// Answers a subscription that cannot be served now with a stream that
/// gives `retry:` and ends at once, which `EventSource` retries.
fn retry_later(conn: Conn, app: &App, params: &StreamParams, why: &str) {
    if let Some(more) = app.refusal_log.due(Instant::now()) {
        log::info!("{why}: a stream ends at once, to be retried{more}");
    }
    stream::retry_later(conn.into_stream(), params);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split() {
        assert_eq!(split_target("/events?topic=a"), ("/events", "topic=a"));
        assert_eq!(split_target("/events"), ("/events", ""));
        assert_eq!(split_target("http://h:1/events?x"), ("/events", "x"));
        assert_eq!(split_target("http://h"), ("/", ""));
        assert_eq!(split_target("HTTP://h?x"), ("/", "x"));
        use crate::access::absolute_form;
        assert_eq!(absolute_form("HTTPS://h:1/e?x"), Some(("h:1", "/e?x")));
        assert_eq!(absolute_form("/e?x=http://h"), None);
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            parse_query("topic=a%20b&topic=c+d&x&=v&lastEventId=1-2").unwrap(),
            [
                ("topic".into(), "a b".into()),
                ("topic".into(), "c d".into()),
                ("x".into(), "".into()),
                ("".into(), "v".into()),
                ("lastEventId".into(), "1-2".into()),
            ]
        );
        assert_eq!(parse_query("t=%E2%9C%93").unwrap()[0].1, "\u{2713}");
        assert_eq!(parse_query("t=%0A").unwrap()[0].1, "\n");
        assert!(parse_query("t=%").is_err());
        assert!(parse_query("t=%4").is_err());
        assert!(parse_query("t=%zz").is_err());
        assert!(parse_query("t=%+1").is_err());
        assert!(parse_query("t=%FF").is_err());
    }

    #[test]
    fn page_csp_names_the_inline_script_and_style() {
        use base64::Engine;
        use sha2::Digest;
        for tag in ["script", "style"] {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            assert_eq!(PAGE.matches(&open).count(), 1, "one inline <{tag}>");
            let start = PAGE.find(&open).unwrap() + open.len();
            let end = start + PAGE[start..].find(&close).unwrap();
            let digest = sha2::Sha256::digest(&PAGE[start..end]);
            let source = format!(
                "{tag}-src 'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            );
            assert!(
                PAGE_CSP.contains(&source),
                "src/index.html changed: PAGE_CSP needs {source}"
            );
        }
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = |secs| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_764_000_000), "2025-11-24T16:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn log_text_is_escaped() {
        assert_eq!(shown("a\nb\x1b"), "a\\nb\\u{1b}");
        assert_eq!(shown(&"x".repeat(200)).chars().count(), 121);
    }
}
