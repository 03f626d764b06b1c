//! SIGINT/SIGTERM: streams end cleanly and the process exits 0 in time.

use std::time::{Duration, Instant};

use crate::harness::{Hub, Start};

#[test]
fn sigterm_with_a_thousand_streams_exits_0_within_2_seconds() {
    let mut hub = Hub::start(&[]);
    let mut subs: Vec<_> = (0..1000).map(|_| hub.subscribe("/events", "")).collect();
    for s in &mut subs {
        s.next_block();
    }
    let started = Instant::now();
    hub.signal(libc::SIGTERM);
    let status = hub
        .wait_exit(Duration::from_secs(2))
        .expect("exited within 2 s");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    let clean = subs
        .iter_mut()
        .map(|s| s.ends_cleanly(Duration::from_secs(1)))
        .filter(|clean| *clean)
        .count();
    assert_eq!(clean, 1000, "streams without the zero chunk");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Fills a subscriber that never reads, so its thread blocks in a write
/// and the hub needs its whole grace period to exit.
fn stuck_subscriber(hub: &Hub) -> crate::harness::Sub {
    let stuck = hub.subscribe("/events", "");
    socket2::SockRef::from(&stuck.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let big = "x".repeat(900_000);
    for _ in 0..8 {
        hub.publish("t", &big);
    }
    stuck
}

#[test]
fn sigint_stops_accepting_at_once() {
    let mut hub = Hub::start(&["--max-event-bytes", "1000000"]);
    let addr = hub.addr;
    let stuck = stuck_subscriber(&hub);
    hub.signal(libc::SIGINT);
    assert!(hub.wait_log("shutting down", Duration::from_secs(2)));
    // Still running (its stuck stream has the grace period to end), but
    // no longer accepting.
    assert!(
        crate::harness::poll(Duration::from_millis(500), || {
            std::net::TcpStream::connect(addr).is_err()
        }),
        "still accepting after SIGINT"
    );
    assert!(
        hub.running(),
        "exited before the grace period: nothing was tested"
    );
    assert_eq!(
        hub.wait_exit(Duration::from_secs(2)).unwrap().code(),
        Some(0)
    );
    drop(stuck);
}

#[test]
fn a_second_signal_exits_at_once() {
    // The stuck stream makes the first signal wait out the grace period;
    // the second must not.
    let mut hub = Hub::start_with(&["--max-event-bytes", "1000000"], Start::default());
    let stuck = stuck_subscriber(&hub);
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_log("shutting down", Duration::from_secs(2)));
    let started = Instant::now();
    hub.signal(libc::SIGINT);
    let status = hub
        .wait_exit(Duration::from_secs(1))
        .expect("exited at once");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(status.code(), Some(130), "{}", hub.log());
    drop(stuck);
}
