//! Publish and subscribe tokens, CORS.

use crate::harness::{Hub, Start};

#[test]
fn publishing_needs_the_exact_bearer_token() {
    let hub = Hub::start(&["--publish-token", "s3cret"]);
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic s3cret\r\n",
        "Authorization: Bearers3cret\r\n",
        "Authorization: Bearer\r\n",
        "Authorization: Bearer s3cret2\r\n",
        "Authorization: Bearer s3cre\r\n",
        "Authorization: s3cret\r\n",
        "Authorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n",
    ] {
        let r = hub.post("/events", b"x", auth);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.error(), "missing or wrong publish token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // The query token is for subscribers only.
    assert_eq!(hub.post("/events?token=s3cret", b"x", "").status, 401);
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
    // RFC 9110: the scheme name is case-insensitive.
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
        let r = hub.post("/events", b"x", &format!("Authorization: {auth}\r\n"));
        assert_eq!(r.status, 200, "{auth:?}");
    }
}

#[test]
fn subscribing_needs_the_token_by_header_or_query() {
    let hub = Hub::start(&["--subscribe-token", "t0k"]);
    for (target, headers) in [
        ("/events", ""),
        ("/events?token=nope", ""),
        ("/events", "Authorization: Bearer nope\r\n"),
        ("/events?token=t0k2", ""),
    ] {
        let s = hub.try_subscribe(target, headers);
        assert_eq!(s.head.status, 401, "{target} {headers:?}");
        assert_eq!(
            String::from_utf8_lossy(&s.head.body),
            "missing or wrong subscribe token\n"
        );
    }
    hub.subscribe("/events?token=t0k", "");
    hub.subscribe("/events", "Authorization: Bearer t0k\r\n");
    // Publishing is open: only --publish-token guards it.
    assert_eq!(hub.post("/events", b"x", "").status, 200);
}

#[test]
fn without_cors_origin_nothing_is_allowed_cross_origin() {
    let hub = Hub::start(&[]);
    let s = hub.subscribe("/events", "Origin: https://a.example\r\n");
    assert_eq!(s.head.header("access-control-allow-origin"), None);
    let r = hub.post("/events", b"x", "Origin: https://a.example\r\n");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = hub.raw(b"OPTIONS /events HTTP/1.1\r\nHost: localhost\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn cors_origin_applies_to_streams_publishes_errors_and_preflight() {
    let hub = Hub::start_with(
        &["--cors-origin", "https://a.example", "--publish-token", "p"],
        Start::default(),
    );
    let s = hub.subscribe("/events", "Origin: https://a.example\r\n");
    assert_eq!(
        s.head.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(s.head.header("vary"), Some("Origin"));
    let r = hub.post("/events", b"x", "Authorization: Bearer p\r\n");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    let r = hub.post("/events", b"x", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    let r = hub.raw(b"OPTIONS /events HTTP/1.1\r\nHost: localhost\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\n\r\n");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, DELETE, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Last-Event-ID, Authorization, Content-Type")
    );
    // Other routes stay same-origin.
    assert_eq!(
        hub.get("/metrics").header("access-control-allow-origin"),
        None
    );
}

#[test]
fn cors_origin_star() {
    let hub = Hub::start(&["--cors-origin", "*"]);
    let s = hub.subscribe("/events", "Origin: https://b.example\r\n");
    assert_eq!(s.head.header("access-control-allow-origin"), Some("*"));
    assert_eq!(s.head.header("vary"), None);
}

#[test]
fn browsers_may_publish_only_from_allowed_origins() {
    let hub = Hub::start(&[]);
    let host = hub.addr.to_string();
    // What any web page can send to a hub on loopback without a preflight.
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let r = hub.post("/events", b"x", &format!("Origin: {origin}\r\n"));
        assert_eq!(r.status, 403, "{origin}");
        assert_eq!(
            r.error(),
            "cross-origin publish refused (see --cors-origin)"
        );
    }
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
    // The hub's own page, and clients that send no Origin.
    let r = hub.raw(
        format!(
            "POST /events HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(hub.post("/events", b"x", "").status, 200);

    let hub = Hub::start(&["--cors-origin", "https://app.example"]);
    let ok = hub.post("/events", b"x", "Origin: https://app.example\r\n");
    assert_eq!(ok.status, 200);
    let r = hub.post("/events", b"x", "Origin: https://evil.example\r\n");
    assert_eq!(r.status, 403);
}

/// `*` lets every page read; publishing from another origin needs that
/// origin named, or the publish token.
#[test]
fn cors_origin_star_opens_reading_not_publishing() {
    let hub = Hub::start(&["--cors-origin", "*"]);
    let anyone = "Origin: https://anyone.example\r\n";
    let s = hub.subscribe("/events", anyone);
    assert_eq!(s.head.header("access-control-allow-origin"), Some("*"));
    let r = hub.post("/events", b"x", anyone);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.error(),
        "cross-origin publish refused (see --cors-origin)"
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(hub.post("/events", b"x", "").status, 200, "no Origin");
    assert_eq!(hub.metric("ssehub_events_published_total"), 1);

    let hub = Hub::start(&["--cors-origin", "*", "--publish-token", "p"]);
    let with_token = format!("{anyone}Authorization: Bearer p\r\n");
    assert_eq!(hub.post("/events", b"x", &with_token).status, 200);
    let wrong = format!("{anyone}Authorization: Bearer q\r\n");
    assert_eq!(hub.post("/events", b"x", &wrong).status, 403);
    assert_eq!(hub.post("/events", b"x", anyone).status, 403);
    assert_eq!(hub.metric("ssehub_events_published_total"), 1);
    // A named origin with its token; another origin with the token.
    let hub = Hub::start(&[
        "--cors-origin",
        "https://app.example",
        "--publish-token",
        "p",
    ]);
    let named = "Origin: https://app.example\r\nAuthorization: Bearer p\r\n";
    assert_eq!(hub.post("/events", b"x", named).status, 200);
    assert_eq!(hub.post("/events", b"x", &with_token).status, 200);
}

/// DNS rebinding: a page whose name is pointed at 127.0.0.1 is same-origin
/// with a hub on loopback, so only the `Host` it sends gives it away.
#[test]
fn a_hub_on_loopback_answers_only_to_loopback_names() {
    let hub = Hub::start(&[]);
    let port = hub.addr.port();
    let get = |target: &str, host: &str| {
        hub.raw(
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let refused = "this hub is not served under that Host name (see --allowed-hosts)";
    for host in [
        format!("evil.example:{port}"),
        "evil.example".into(),
        "localhost.evil.example".into(),
        format!("10.0.0.1:{port}"),
        "[::2]".into(),
    ] {
        for target in ["/", "/events", "/metrics", "/healthz", "/nowhere"] {
            let r = get(target, &host);
            assert_eq!(
                (r.status, r.text()),
                (403, format!("{refused}\n")),
                "{host} {target}"
            );
        }
        let r = hub.raw(
            format!(
                "POST /events HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
                 Content-Length: 1\r\nConnection: close\r\n\r\nx"
            )
            .as_bytes(),
        );
        assert_eq!((r.status, r.error()), (403, refused.into()), "{host}");
    }
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
    assert_eq!(hub.metric("ssehub_subscribers"), 0);

    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        format!("127.0.0.1:{port}"),
        "127.1.2.3".into(),
        format!("[::1]:{port}"),
        "app.localhost".into(),
    ] {
        assert_eq!(get("/healthz", &host).status, 200, "{host}");
    }
    // No Host at all: HTTP/1.0, not a browser.
    let r = hub.raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);

    // An absolute-form target names the host instead of Host (RFC 9112).
    assert_eq!(get("http://evil.example/healthz", "localhost").status, 403);
    assert_eq!(
        get(&format!("HTTP://localhost:{port}/healthz"), "evil.example").status,
        200
    );
    // A Host that is not a host: refused, not read as its first part.
    for host in ["localhost:80@evil.example", "localhost:1:evil", "[::1]evil"] {
        let r = get("/healthz", host);
        assert_eq!(
            (r.status, r.text()),
            (400, "malformed Host field\n".into()),
            "{host}"
        );
    }
    let r = get("http://user@localhost/healthz", "localhost");
    assert_eq!(r.status, 400);
}

#[test]
fn allowed_hosts_names_the_hub_behind_a_proxy() {
    let hub = Hub::start(&["--allowed-hosts", "hub.example,10.0.0.5,[2001:DB8:0::1]"]);
    let get = |host: &str| {
        hub.raw(
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    for host in [
        "hub.example",
        "HUB.example:443",
        "10.0.0.5:8080",
        "localhost",
        "[2001:db8::1]:8080",
    ] {
        assert_eq!(get(host).status, 200, "{host}");
    }
    for host in ["evil.example", "sub.hub.example", "10.0.0.6"] {
        assert_eq!(get(host).status, 403, "{host}");
    }

    let hub = Hub::start(&["--allowed-hosts", "*"]);
    let r =
        hub.raw(b"GET /healthz HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
}
