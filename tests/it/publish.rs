//! `POST /events`: the JSON answer, the wire frame, and every refusal
//! publishing nothing.

use crate::harness::{id_pair, json_field, Hub};

#[test]
fn publish_answers_json_and_the_subscriber_gets_the_exact_frame() {
    let hub = Hub::start(&[]);
    let mut sub = hub.subscribe("/events?topic=orders", "");
    sub.next_block(); // retry
    let r = hub.post(
        "/events?topic=orders&event=created",
        b"line one\nline two",
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = json_field(&r.text(), "id");
    assert_eq!(
        r.text(),
        format!("{{\"id\":\"{id}\",\"receivers\":1,\"topic\":\"orders\"}}")
    );
    assert_eq!(
        sub.next_block(),
        format!("id: {id}\nevent: created\ndata: line one\ndata: line two\n\n")
    );
}

#[test]
fn every_line_end_becomes_a_data_line() {
    let hub = Hub::start(&[]);
    let mut sub = hub.subscribe("/events", "");
    sub.next_block();
    let id = json_field(&hub.post("/events", b"a\r\nb\rc\nd\n", "").text(), "id");
    assert_eq!(
        sub.next_block(),
        format!("id: {id}\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n")
    );
}

#[test]
fn default_topic_and_receiver_count() {
    let hub = Hub::start(&[]);
    let r = hub.post("/events", b"x", "");
    assert_eq!(json_field(&r.text(), "topic"), "default");
    assert_eq!(json_field(&r.text(), "receivers"), "0");
    let _a = hub.subscribe("/events?topic=default", "");
    let _b = hub.subscribe("/events", "");
    let _c = hub.subscribe("/events?topic=other", "");
    assert_eq!(
        json_field(&hub.post("/events", b"x", "").text(), "receivers"),
        "2"
    );
}

#[test]
fn chunked_body_is_the_event_data() {
    let hub = Hub::start(&[]);
    let mut sub = hub.subscribe("/events?topic=t", "");
    sub.next_block();
    let r = hub.raw(
        b"POST /events?topic=t HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = sub.next_event();
    assert_eq!(ev.data, "hello world");
}

#[test]
fn expect_continue_is_answered_before_the_body() {
    use std::io::Write;
    let hub = Hub::start(&[]);
    let mut s = hub.connect();
    s.write_all(
        b"POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(crate::harness::read_head(&mut s).unwrap().status, 100);
    s.write_all(b"hi").unwrap();
    let r = crate::harness::read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn http10_clients_get_no_100_continue() {
    let hub = Hub::start(&[]);
    let r =
        hub.raw(b"POST /events HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi");
    assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
}

#[test]
fn ids_grow_strictly_across_topics() {
    let hub = Hub::start(&[]);
    let mut last = (0, 0);
    for i in 0..300 {
        let id = id_pair(&hub.publish(if i % 3 == 0 { "a" } else { "b" }, "x"));
        assert!(id > last, "{id:?} after {last:?}");
        last = id;
    }
}

#[test]
fn ids_are_larger_after_a_restart() {
    let hub = Hub::start(&[]);
    let before = id_pair(&hub.publish("t", "x"));
    drop(hub);
    let hub = Hub::start(&[]);
    let after = id_pair(&hub.publish("t", "x"));
    assert!(after > before, "{after:?} not above {before:?}");
}

/// Every refusal: status, JSON reason, nothing published.
#[test]
fn refusals_publish_nothing() {
    let hub = Hub::start(&["--max-event-bytes", "16"]);
    let mut sub = hub.subscribe("/events", "");
    sub.next_block();
    let long = "x".repeat(257);
    let cases: Vec<(String, Vec<u8>, &str, u16, &str)> = vec![
        (
            "/events".into(),
            vec![0xff, 0xfe],
            "",
            400,
            "body is not UTF-8",
        ),
        (
            "/events?topic=".into(),
            b"x".to_vec(),
            "",
            400,
            "topic is empty",
        ),
        (
            format!("/events?topic={long}"),
            b"x".to_vec(),
            "",
            400,
            "topic is longer than 256 bytes",
        ),
        (
            "/events?topic=a%0Ab".into(),
            b"x".to_vec(),
            "",
            400,
            "topic holds a control character",
        ),
        (
            "/events?topic=a%0Db".into(),
            b"x".to_vec(),
            "",
            400,
            "topic holds a control character",
        ),
        (
            "/events?event=".into(),
            b"x".to_vec(),
            "",
            400,
            "event is empty",
        ),
        (
            format!("/events?event={long}"),
            b"x".to_vec(),
            "",
            400,
            "event is longer than 256 bytes",
        ),
        (
            "/events?event=a%00".into(),
            b"x".to_vec(),
            "",
            400,
            "event holds a control character",
        ),
        (
            "/events?event=ssehub:gap".into(),
            b"x".to_vec(),
            "",
            400,
            "event names starting with \"ssehub:\" are reserved",
        ),
        (
            "/events?topic=a&topic=b".into(),
            b"x".to_vec(),
            "",
            400,
            "topic given more than once",
        ),
        (
            "/events?topic=%zz".into(),
            b"x".to_vec(),
            "",
            400,
            "malformed percent-encoding in the query",
        ),
        (
            "/events?topic=%FF".into(),
            b"x".to_vec(),
            "",
            400,
            "query is not UTF-8",
        ),
        (
            "/events".into(),
            vec![b'x'; 17],
            "",
            413,
            "body larger than this route accepts",
        ),
    ];
    for (target, body, headers, status, reason) in cases {
        let r = hub.post(&target, &body, headers);
        assert_eq!(
            (r.status, r.error()),
            (status, reason.to_string()),
            "{target}"
        );
    }
    // No length at all.
    let r = hub.raw(b"POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(
        (r.status, r.error()),
        (411, "Content-Length or chunked body required".into())
    );
    // Chunked, over the limit.
    let r = hub.raw(b"POST /events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n12345678901234567\r\n0\r\n\r\n");
    assert_eq!(r.status, 413);
    // Exactly the limit is fine.
    assert_eq!(hub.post("/events", &[b'y'; 16], "").status, 200);
    assert_eq!(
        sub.next_event().data,
        "y".repeat(16),
        "a refused publish reached the stream"
    );
    assert_eq!(hub.metric("ssehub_events_published_total"), 1);
}
