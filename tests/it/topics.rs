//! Ending a topic and looking into the hub (SPEC "Ending a topic",
//! "Subscriptions"): `DELETE /events` ends the streams of that topic with
//! the zero chunk, answers later subscriptions 204 and later publishes 410,
//! until the log drops the end; `GET /subscriptions` lists this process's
//! streams and `DELETE /subscriptions/ID` ends one.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{json_field, poll, read_head, Hub, Response, Sub};
use crate::tokens::{grants, hs256, SECRET};

fn delete(hub: &Hub, target: &str, body: &str, headers: &str) -> Response {
    let req = format!(
        "DELETE {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    hub.raw(req.as_bytes())
}

/// Ends `topic` with `data`; its id.
pub fn end_topic(hub: &Hub, topic: &str, data: &str) -> String {
    let r = delete(hub, &format!("/events?topic={topic}"), data, "");
    assert_eq!(r.status, 200, "end of {topic}: {}", r.text());
    json_field(&r.text(), "id")
}

/// The raw bytes after the head until the hub closes the connection.
fn rest_of(sub: &mut Sub) -> String {
    sub.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut raw = Vec::new();
    sub.stream
        .read_to_end(&mut raw)
        .expect("the stream ends within 5 s");
    String::from_utf8(raw).unwrap()
}

/// A subscription that must be answered 204, with nothing after the head.
pub fn assert_204(hub: &Hub, target: &str, headers: &str) {
    let mut s = hub.connect();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let head = read_head(&mut s).expect("an answer");
    assert_eq!(head.status, 204, "{target}: {head:?}");
    let r = head;
    assert_eq!(r.header("content-length"), None);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a body after 204: {rest:?}");
}

#[test]
fn the_end_of_a_topic_ends_its_streams_with_the_zero_chunk() {
    let hub = Hub::start(&["--heartbeat", "5"]);
    let mut only = hub.subscribe("/events?topic=job", "");
    let mut both = hub.subscribe("/events?topic=job&topic=other", "");
    let mut every = hub.subscribe("/events", "");
    for s in [&mut only, &mut both, &mut every] {
        assert!(s.next_block().starts_with("retry: "));
    }
    let id = end_topic(&hub, "job", "done\nfor good");
    let block = format!("id: {id}\nevent: ssehub:closed\ndata: done\ndata: for good\n\n");
    // The frame, its chunk end, and the zero chunk: nothing else.
    assert_eq!(
        rest_of(&mut only),
        format!("{:x}\r\n{block}\r\n0\r\n\r\n", block.len())
    );
    // Streams with a topic still open go on.
    assert_eq!(both.next_block(), block);
    assert_eq!(every.next_block(), block);
    let next = hub.publish("other", "more");
    for s in [&mut both, &mut every] {
        assert_eq!(s.next_event().id.as_deref(), Some(next.as_str()));
    }
}

#[test]
fn an_ended_topic_is_answered_204_and_refuses_publish_and_a_second_end() {
    let hub = Hub::start(&["--heartbeat", "5"]);
    let first = hub.publish("job", "1");
    let second = hub.publish("job", "2");
    let end = end_topic(&hub, "job", "");
    assert_204(&hub, "/events?topic=job", "");
    assert_204(
        &hub,
        "/events?topic=job",
        &format!("Last-Event-ID: {end}\r\n"),
    );
    assert_204(&hub, &format!("/events?topic=job&lastEventId={end}"), "");

    let r = hub.post("/events?topic=job", b"late", "");
    assert_eq!((r.status, r.error()), (410, "topic closed".to_string()));
    let r = delete(&hub, "/events?topic=job", "", "");
    assert_eq!((r.status, r.error()), (410, "topic closed".to_string()));
    let r = delete(&hub, "/events?topic=job&event=x", "", "");
    assert_eq!(r.status, 400);
    let r = hub.post("/events?topic=job&event=ssehub:closed", b"x", "");
    assert_eq!(r.status, 400, "the reserved name is the hub's");

    // A client that missed the end gets what it missed, the end, and the
    // stream end; its next reconnect gets the 204.
    let mut late = hub.subscribe("/events?topic=job", &format!("Last-Event-ID: {first}\r\n"));
    late.next_block();
    assert_eq!(late.next_event().id.as_deref(), Some(second.as_str()));
    let closed = late.next_event();
    assert_eq!(
        (
            closed.id.as_deref(),
            closed.event.as_deref(),
            closed.data.as_str()
        ),
        (Some(end.as_str()), Some("ssehub:closed"), "")
    );
    assert!(late.ends_cleanly(Duration::from_secs(5)), "{}", late.tail());

    // A selector or every topic is never all ended; another topic is open.
    let mut any = hub.subscribe("/events?topic=*", &format!("Last-Event-ID: {end}\r\n"));
    any.next_block();
    let next = hub.publish("other", "x");
    assert_eq!(any.next_event().id.as_deref(), Some(next.as_str()));
    assert_eq!(
        hub.subscribe("/events?topic=job&topic=other", "")
            .head
            .status,
        200
    );
}

#[test]
fn a_topic_is_open_again_once_the_history_dropped_its_end() {
    let hub = Hub::start(&["--history", "3", "--heartbeat", "5"]);
    end_topic(&hub, "job", "");
    assert_204(&hub, "/events?topic=job", "");
    for i in 0..3 {
        hub.publish("other", &i.to_string());
    }
    let mut sub = hub.subscribe("/events?topic=job", "");
    sub.next_block();
    let id = hub.publish("job", "again");
    assert_eq!(sub.next_event().id.as_deref(), Some(id.as_str()));
    end_topic(&hub, "job", "twice");
    assert!(sub.next_event().event.as_deref() == Some("ssehub:closed"));
    assert!(sub.ends_cleanly(Duration::from_secs(5)));
}

#[test]
fn a_stream_behind_its_queue_ends_at_the_end_it_reads_from_the_log() {
    let hub = Hub::start(&["--client-queue", "1", "--heartbeat", "5"]);
    let mut sub = hub.subscribe("/events?topic=job", "");
    sub.next_block();
    // The queue overflows at once: the stream reads the rest from the log,
    // where the end is followed by another topic's events.
    let ids: Vec<String> = (0..50)
        .map(|i| hub.publish("job", &i.to_string()))
        .collect();
    let end = end_topic(&hub, "job", "");
    hub.publish("other", "after");
    for id in &ids {
        assert_eq!(sub.next_event().id.as_deref(), Some(id.as_str()));
    }
    assert_eq!(sub.next_event().id.as_deref(), Some(end.as_str()));
    assert!(sub.ends_cleanly(Duration::from_secs(5)), "{}", sub.tail());
}

fn list(hub: &Hub, query: &str, headers: &str) -> Response {
    hub.raw(
        format!(
            "GET /subscriptions{query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
        )
        .as_bytes(),
    )
}

fn listed(hub: &Hub, query: &str, headers: &str) -> Vec<Value> {
    let r = list(hub, query, headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["subscriptions"].as_array().unwrap().clone()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[test]
fn subscriptions_list_ids_topics_sub_and_how_far_behind() {
    let hub = Hub::start(&[
        "--jwt-secret",
        SECRET,
        "--heartbeat",
        "30",
        "--client-queue",
        "2",
        "--max-event-bytes",
        "1048576",
    ]);
    let admin = bearer(&hs256(&grants(&["*"], &["*"])));
    let reader = hs256(&grants(&[], &["a", "b", "slow", "users/*"]));
    let before = hub.publish_with("a", "0", &admin);
    let mut a = hub.subscribe(&format!("/events?topic=a&authorization={reader}"), "");
    let mut ab = hub.subscribe(
        &format!("/events?topic=b&topic=users/*&authorization={reader}"),
        &format!("Last-Event-ID: {before}\r\n"),
    );
    // Reads its head and nothing more: its socket fills, then its queue.
    let slow = hub.subscribe(&format!("/events?topic=slow&authorization={reader}"), "");
    a.next_block();
    ab.next_block();
    let seen = hub.publish_with("a", "1", &admin);
    assert_eq!(a.next_event().id.as_deref(), Some(seen.as_str()));
    let big = "x".repeat(1 << 20);
    for _ in 0..40 {
        hub.publish_with("slow", &big, &admin);
    }

    // The position is recorded just after the write the client read.
    assert!(poll(Duration::from_secs(5), || listed(&hub, "", &admin)[0]
        ["last_event_id"]
        == seen.as_str()));
    let all = listed(&hub, "", &admin);
    assert_eq!(all.len(), 3, "{all:?}");
    let ids: Vec<&str> = all.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    let topics: Vec<&Value> = all.iter().map(|s| &s["topics"]).collect();
    assert_eq!(
        topics,
        [
            &serde_json::json!(["a"]),
            &serde_json::json!(["b", "users/*"]),
            &serde_json::json!(["slow"])
        ]
    );
    for s in &all {
        assert_eq!(s["sub"], "user-42");
        assert!(
            s["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{s}"
        );
        let since = s["since"].as_str().unwrap();
        assert!(since.len() == 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T');
    }
    assert_eq!(all[0]["last_event_id"], seen.as_str());
    assert_eq!(all[1]["last_event_id"], before.as_str());
    assert_eq!(
        (&all[0]["behind"], &all[1]["behind"]),
        (&0.into(), &0.into())
    );
    // The kernel holds a few MB of the 40 MB; the rest waits for it.
    let behind = all[2]["behind"].as_u64().unwrap();
    assert!((20..=40).contains(&behind), "slow is behind {behind}");

    // Filtered by a selector: what overlaps it.
    let users = listed(&hub, "?topic=users/42", &admin);
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["id"], ids[1]);
    assert_eq!(listed(&hub, "?topic=users/*", &admin).len(), 1);
    assert_eq!(listed(&hub, "?topic=*", &admin).len(), 3);
    assert_eq!(listed(&hub, "?topic=nobody", &admin).len(), 0);
    drop(slow);
}

#[test]
fn subscriptions_need_the_publish_token_or_the_grant_of_every_topic() {
    let hub = Hub::start(&["--publish-token", "pub-secret", "--jwt-secret", SECRET]);
    let r = list(&hub, "", "");
    assert_eq!(r.status, 401);
    assert_eq!(list(&hub, "", &bearer("wrong")).status, 401);
    let narrow = bearer(&hs256(&grants(&["a", "users/*"], &["*"])));
    let r = list(&hub, "", &narrow);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(delete(&hub, "/subscriptions/0", "", &narrow).status, 403);
    assert_eq!(list(&hub, "", &bearer("pub-secret")).status, 200);
    let wide = bearer(&hs256(&grants(&["*"], &[])));
    assert_eq!(list(&hub, "", &wide).status, 200);

    // The routes: 404 for an unknown one, 405 with Allow for a method.
    let r = hub.post("/subscriptions", b"", "");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = hub.post("/subscriptions/1", b"", "");
    assert_eq!((r.status, r.header("allow")), (405, Some("DELETE")));
    assert_eq!(hub.get("/subscriptionsx").status, 404);
}

#[test]
fn delete_a_subscription_ends_exactly_that_stream() {
    let hub = Hub::start(&["--heartbeat", "5"]);
    let mut gone = hub.subscribe("/events?topic=a", "");
    let mut kept = hub.subscribe("/events?topic=a", "");
    gone.next_block();
    kept.next_block();
    let all = listed(&hub, "", "");
    assert_eq!(all.len(), 2);
    let id = all[0]["id"].as_str().unwrap().to_string();
    let r = delete(&hub, &format!("/subscriptions/{id}"), "", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(gone.ends_cleanly(Duration::from_secs(5)), "{}", gone.tail());
    let next = hub.publish("a", "x");
    assert_eq!(kept.next_event().id.as_deref(), Some(next.as_str()));
    assert!(poll(Duration::from_secs(5), || listed(&hub, "", "").len() == 1));
    for unknown in [id.as_str(), "999999", "x", "+1", ""] {
        let r = delete(&hub, &format!("/subscriptions/{unknown}"), "", "");
        assert_eq!(r.status, 404, "{unknown}: {}", r.text());
    }
}

/// Node's `eventsource` package (`make deps` installs it under
/// target/node): after the 204 it stops for good, as browsers do.
#[test]
fn node_eventsource_stops_after_the_204() {
    let root = env!("CARGO_MANIFEST_DIR");
    let modules = format!("{root}/target/node/node_modules");
    let found = std::path::Path::new(&format!("{modules}/eventsource")).exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok();
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "node or its eventsource package is missing (`make deps` installs it)"
        );
        eprintln!("skipped: node or eventsource missing (`make deps` installs it)");
        return;
    }
    let hub = crate::harness::Hub::start_with(
        &["--retry-ms", "200"],
        crate::harness::Start {
            env: vec![("RUST_LOG", "ssehub=debug")],
            ..Default::default()
        },
    );
    let mut watcher = hub.subscribe("/events?topic=job", "");
    watcher.next_block();
    let node = std::process::Command::new("node")
        .arg(format!("{root}/tests/node/ended.js"))
        .arg(format!("http://{}/events?topic=job", hub.addr))
        .env("NODE_PATH", &modules)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    // Its stream is open once the hub counts two subscribers.
    assert!(poll(Duration::from_secs(10), || hub
        .metric("ssehub_subscribers")
        == 2));
    end_topic(&hub, "job", "done");
    let out = node.wait_with_output().expect("node ran");
    let got: Value = serde_json::from_slice(&out.stdout).expect("node's JSON");
    assert_eq!(
        got,
        serde_json::json!({
            // It reports the 204 while still CONNECTING, then is CLOSED.
            "seen": ["open", "closed done", "error 0", "error 0 204"],
            "readyState": 2
        })
    );
    assert_eq!(
        hub.log().matches("answered 204").count(),
        1,
        "{}",
        hub.log()
    );
}
