//! `/`, `/healthz`, `/metrics`, 404 and 405.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness::{read_response, Hub, Response};

#[test]
fn healthz_is_ok() {
    let hub = Hub::start(&[]);
    let r = hub.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

#[test]
fn page_is_served_with_a_csp() {
    let hub = Hub::start(&[]);
    let r = hub.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(r.text().contains("EventSource"));
}

#[test]
fn unknown_paths_are_404() {
    let hub = Hub::start(&[]);
    for path in ["/nope", "/events/", "/Events", "/%65vents", "*"] {
        assert_eq!(hub.get(path).status, 404, "{path}");
    }
}

#[test]
fn other_methods_are_405_with_allow() {
    let hub = Hub::start(&[]);
    let r = hub.raw(b"PATCH /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, POST, DELETE"))
    );
    let r = hub.raw(b"PUT /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, POST, DELETE"))
    );
    let r = hub.raw(b"OPTIONS /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, POST, DELETE"))
    );
    let r = hub.raw(b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

/// Reads one response, then expects the hub to have closed the connection.
fn answered_then_closed(s: &mut TcpStream) -> Response {
    let r = read_response(s).expect("a response");
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after {r:?}: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    r
}

#[test]
fn a_typo_is_404_or_405_whatever_body_it_declares() {
    let hub = Hub::start(&["--max-event-bytes", "4"]);
    let send = |raw: &str| {
        let mut s = hub.connect();
        s.write_all(raw.as_bytes()).unwrap();
        answered_then_closed(&mut s)
    };
    // `curl -X POST --data hello localhost:8080/publish`
    let r = send("POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    assert_eq!(r.error(), "not found");
    // `curl -X PUT --data x localhost:8080/events`
    let r = send("PUT /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(
        (r.status, r.header("allow"), r.header("connection")),
        (405, Some("GET, POST, DELETE"), Some("close"))
    );
    // A body larger than any route takes, and one whose size is unknown.
    for framing in [
        "Content-Length: 99999999999999999999",
        "Transfer-Encoding: chunked",
    ] {
        let r = send(&format!(
            "POST /nope HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\nabc"
        ));
        assert_eq!(
            (r.status, r.header("connection")),
            (404, Some("close")),
            "{framing}"
        );
        let r = send(&format!(
            "DELETE /metrics HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\nabc"
        ));
        assert_eq!(
            (r.status, r.header("allow")),
            (405, Some("GET, HEAD")),
            "{framing}"
        );
    }
    // The size check still comes before the body on the route that takes one.
    let r = send("POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(r.status, 413);
    // Without a body, a refusal keeps the connection.
    let mut s = hub.connect();
    s.write_all(b"GET /publish HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.header("connection")), (404, None));
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let hub = Hub::start(&[]);
    let mut s = hub.connect();
    // Pipelined: two publishes and a health check in one write.
    s.write_all(
        b"POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\na\
          POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nb\
          GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    for status in [200, 200, 200] {
        assert_eq!(
            crate::harness::read_response(&mut s).unwrap().status,
            status
        );
    }
    assert_eq!(hub.metric("ssehub_events_published_total"), 2);
}

#[test]
fn metrics_count_what_happened() {
    let hub = Hub::start(&["--client-queue", "1", "--history", "3"]);
    let text = hub.get("/metrics");
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for name in [
        "ssehub_subscribers",
        "ssehub_events_published_total",
        "ssehub_events_delivered_total",
        "ssehub_subscribers_evicted_total",
        "ssehub_history_events",
    ] {
        assert_eq!(hub.metric(name), 0, "{name}");
        assert!(text.text().contains(&format!("# TYPE {name} ")), "{name}");
    }
    let mut a = hub.subscribe("/events", "");
    let mut b = hub.subscribe("/events?topic=t", "");
    a.next_block();
    b.next_block();
    assert_eq!(hub.metric("ssehub_subscribers"), 2);
    for i in 0..5 {
        hub.publish("t", &i.to_string());
        a.next_event();
        b.next_event();
    }
    assert_eq!(hub.metric("ssehub_events_published_total"), 5);
    assert!(crate::harness::poll(
        std::time::Duration::from_secs(2),
        || { hub.metric("ssehub_events_delivered_total") == 10 }
    ));
    assert_eq!(hub.metric("ssehub_history_events"), 3);
    assert_eq!(hub.metric("ssehub_subscribers_evicted_total"), 0);
}

#[test]
fn closing_answers_say_connection_close() {
    let hub = Hub::start(&["--cors-origin", "*"]);
    // The client asked to close.
    let r = hub.get("/healthz");
    assert_eq!(r.header("connection"), Some("close"));
    // The hub closes after a refusal whose body it did not read.
    let r = hub.raw(b"POST /nope HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    // HTTP/1.0 connections are closed after one answer.
    let r = hub.raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
    // A kept-alive answer says nothing.
    let mut s = hub.connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = crate::harness::read_response(&mut s).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));
    assert!(r.header("date").is_some());
    // 204 carries neither a body nor Content-Length.
    let r = hub.raw(b"OPTIONS /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("content-length")), (204, None));
    assert!(r.body.is_empty());
}

#[test]
fn head_requests_get_no_body() {
    let hub = Hub::start(&[]);
    let mut s = hub.connect();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Length: 3\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body followed: {text:?}");
}
