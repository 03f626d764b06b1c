//! Replay with `Last-Event-ID`: the exact seam between replay and live,
//! `ssehub:gap` events, and malformed ids.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{id_pair, json_field, Hub};

#[test]
fn reconnecting_gets_exactly_what_it_missed() {
    let hub = Hub::start(&[]);
    let first = hub.publish("t", "1");
    let second = hub.publish("t", "2");
    hub.publish("other", "x");
    let third = hub.publish("t", "3");
    let mut sub = hub.subscribe("/events?topic=t", &format!("Last-Event-ID: {first}\r\n"));
    sub.next_block();
    assert_eq!(sub.next_block(), format!("id: {second}\ndata: 2\n\n"));
    assert_eq!(sub.next_block(), format!("id: {third}\ndata: 3\n\n"));
    let live = hub.publish("t", "4");
    assert_eq!(sub.next_block(), format!("id: {live}\ndata: 4\n\n"));
}

#[test]
fn the_query_form_works_and_the_header_wins() {
    let hub = Hub::start(&[]);
    let a = hub.publish("t", "a");
    let b = hub.publish("t", "b");
    hub.publish("t", "c");
    let mut sub = hub.subscribe(&format!("/events?lastEventId={a}"), "");
    sub.next_block();
    assert_eq!(sub.next_event().data, "b");
    // An EventSource reconnects with the header while its URL keeps the
    // id it started from.
    let mut sub = hub.subscribe(
        &format!("/events?lastEventId={a}"),
        &format!("Last-Event-ID: {b}\r\n"),
    );
    sub.next_block();
    assert_eq!(sub.next_event().data, "c");
}

#[test]
fn an_evicted_id_opens_with_a_gap_event() {
    let hub = Hub::start(&["--history", "3"]);
    let ids: Vec<String> = (0..6).map(|i| hub.publish("t", &i.to_string())).collect();
    let mut sub = hub.subscribe("/events", &format!("Last-Event-ID: {}\r\n", ids[0]));
    sub.next_block();
    assert_eq!(
        sub.next_block(),
        format!(
            "event: ssehub:gap\ndata: {{\"last_event_id\":\"{}\",\"oldest_available\":\"{}\"}}\n\n",
            ids[0], ids[3]
        )
    );
    for (i, id) in ids.iter().enumerate().skip(3) {
        assert_eq!(sub.next_block(), format!("id: {id}\ndata: {i}\n\n"));
    }
    // The last evicted id missed nothing that is not retained: no gap.
    let mut sub = hub.subscribe("/events", &format!("Last-Event-ID: {}\r\n", ids[2]));
    sub.next_block();
    assert_eq!(sub.next_event().id.as_deref(), Some(ids[3].as_str()));
}

#[test]
fn the_byte_bound_evicts_too() {
    let hub = Hub::start(&["--history-bytes", "100"]);
    let first = hub.publish("t", &"a".repeat(40));
    hub.publish("t", &"b".repeat(40));
    hub.publish("t", &"c".repeat(40));
    assert!(hub.metric("ssehub_history_events") < 3);
    let mut sub = hub.subscribe("/events", &format!("Last-Event-ID: {first}\r\n"));
    sub.next_block();
    assert_eq!(sub.next_event().event.as_deref(), Some("ssehub:gap"));
}

#[test]
fn unknown_ids_and_restarts_are_gaps() {
    let hub = Hub::start(&[]);
    let id = hub.publish("t", "x");
    let mut sub = hub.subscribe("/events", "Last-Event-ID: 99999999999999-0\r\n");
    sub.next_block();
    let gap = sub.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"));
    assert_eq!(gap.id, None);
    assert_eq!(json_field(&gap.data, "oldest_available"), id);
    drop(sub);

    let addr = hub.addr;
    drop(hub);
    let hub = Hub::start_with(
        &[],
        crate::harness::Start {
            bind: Some(addr),
            ..Default::default()
        },
    );
    let mut sub = hub.subscribe("/events", &format!("Last-Event-ID: {id}\r\n"));
    sub.next_block();
    assert_eq!(
        sub.next_block(),
        format!(
            "event: ssehub:gap\ndata: {{\"last_event_id\":\"{id}\",\"oldest_available\":null}}\n\n"
        )
    );
}

#[test]
fn history_zero_disables_replay() {
    let hub = Hub::start(&["--history", "0"]);
    let a = hub.publish("t", "a");
    hub.publish("t", "b");
    assert_eq!(hub.metric("ssehub_history_events"), 0);
    let mut sub = hub.subscribe("/events", &format!("Last-Event-ID: {a}\r\n"));
    sub.next_block();
    let gap = sub.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"));
    assert_eq!(json_field(&gap.data, "oldest_available"), "null");
}

#[test]
fn malformed_ids_are_400_plain_text() {
    let hub = Hub::start(&[]);
    let long = format!("{}-1", "1".repeat(63));
    for bad in [
        "abc",
        "1",
        "1-",
        "-1",
        "1-2-3",
        "+1-2",
        "1-+2",
        "-1-2",
        "1 -2",
        "0x1-2",
        "18446744073709551616-0",
        "1-18446744073709551616",
        long.as_str(),
    ] {
        let s = hub.try_subscribe("/events", &format!("Last-Event-ID: {bad}\r\n"));
        assert_eq!(s.head.status, 400, "{bad:?}");
        assert_eq!(
            s.head.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(
            String::from_utf8_lossy(&s.head.body).starts_with("malformed Last-Event-ID"),
            "{bad:?}: {:?}",
            s.head
        );
    }
    for bad in ["%2B1-2", "1%20-2", "1-2%00", "%00", "1-2%0A"] {
        let s = hub.try_subscribe(&format!("/events?lastEventId={bad}"), "");
        assert_eq!(s.head.status, 400, "{bad:?}");
    }
    // A NUL or other control byte in the header is refused before parsing.
    let s = hub.try_subscribe("/events", "Last-Event-ID: 1-2\0\r\n");
    assert_eq!(s.head.status, 400);
    hub.canary();
}

/// An empty `lastEventId=` is no id, as an empty `Last-Event-ID` is: the
/// stream starts live, with no replay and no gap.
#[test]
fn an_empty_last_event_id_in_the_query_is_absent() {
    let hub = Hub::start(&[]);
    hub.publish("t", "before");
    for (target, header) in [
        ("/events?topic=t&lastEventId=", ""),
        ("/events?lastEventId&topic=t", ""),
        ("/events?topic=t", "Last-Event-ID: \r\n"),
    ] {
        let mut sub = hub.try_subscribe(target, header);
        assert_eq!(sub.head.status, 200, "{target} {header:?}: {:?}", sub.head);
        assert!(sub.next_event().retry.is_some());
        let live = hub.publish("t", "live");
        assert_eq!(sub.next_block(), format!("id: {live}\ndata: live\n\n"));
    }
    // The header still wins over an empty query id.
    let a = hub.publish("t", "a");
    let b = hub.publish("t", "b");
    let mut sub = hub.subscribe(
        "/events?topic=t&lastEventId=",
        &format!("Last-Event-ID: {a}\r\n"),
    );
    sub.next_block();
    assert_eq!(sub.next_block(), format!("id: {b}\ndata: b\n\n"));
}

/// SPEC: nothing lost or repeated at the seam while publishers are busy.
/// 20 subscribers reconnect in a loop with their last id while 2
/// publishers send 2,000 events; each must see every id exactly once, in
/// order.
#[test]
fn the_seam_is_exact_under_load() {
    let hub = Arc::new(Hub::start(&[]));
    const PER_PUBLISHER: usize = 1000;
    const SUBSCRIBERS: usize = 20;
    let published = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    // Every subscriber is registered before publishing starts.
    let mut first_subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let target = match i % 3 {
            0 => "/events?topic=a".to_string(),
            1 => "/events?topic=b".to_string(),
            _ => "/events".to_string(),
        };
        let mut sub = hub.subscribe(&target, "");
        sub.next_block();
        first_subs.push((target, sub));
    }
    let publishers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|topic| {
            let hub = hub.clone();
            let published = published.clone();
            thread::spawn(move || {
                for n in 0..PER_PUBLISHER {
                    let id = hub.publish(topic, &format!("{topic}{n}"));
                    published.lock().unwrap().push((id, topic.to_string()));
                }
            })
        })
        .collect();
    let readers: Vec<_> = first_subs
        .into_iter()
        .enumerate()
        .map(|(i, (target, mut sub))| {
            let hub = hub.clone();
            thread::spawn(move || {
                let want_topic = target.strip_prefix("/events?topic=").map(str::to_string);
                let expected = match &want_topic {
                    Some(_) => PER_PUBLISHER,
                    None => 2 * PER_PUBLISHER,
                };
                let mut seen: Vec<String> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                // Reconnect after a varying number of events.
                let mut budget = 7 + i * 13 % 50;
                while seen.len() < expected {
                    assert!(
                        Instant::now() < deadline,
                        "subscriber {i} stalled at {}",
                        seen.len()
                    );
                    let ev = sub.next_event();
                    assert_ne!(ev.event.as_deref(), Some("ssehub:gap"), "unexpected gap");
                    if ev.retry.is_some() {
                        continue;
                    }
                    seen.push(ev.id.expect("live event id"));
                    budget -= 1;
                    if budget == 0 {
                        budget = 1 + (seen.len() * 7 + i) % 40;
                        let last = seen.last().unwrap().clone();
                        sub.close();
                        sub = hub.subscribe(&target, &format!("Last-Event-ID: {last}\r\n"));
                    }
                }
                (want_topic, seen)
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let mut all = published.lock().unwrap().clone();
    all.sort_by_key(|(id, _)| id_pair(id));
    let unique: BTreeSet<_> = all.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(unique.len(), 2 * PER_PUBLISHER);
    for r in readers {
        let (topic, seen) = r.join().unwrap();
        let want: Vec<&String> = all
            .iter()
            .filter(|(_, t)| topic.as_ref().is_none_or(|w| w == t))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(seen.len(), want.len());
        for (k, (got, want)) in seen.iter().zip(&want).enumerate() {
            assert_eq!(got, *want, "subscriber for {topic:?} diverged at event {k}");
        }
    }
}
