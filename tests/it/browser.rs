//! The page at `GET /` and the browser's own `EventSource`, in real headless
//! Chromium: what a person sees, read back from the page's DOM.

mod cdp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{json_field, Hub, Start};
use cdp::Page;

/// How long the page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(10);

/// A JavaScript string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("JSON string")
}

/// One row of the page's event list, as shown.
#[derive(Debug, PartialEq)]
struct Row {
    kind: String,
    time: String,
    id: String,
    event: String,
    data: String,
}

fn rows(page: &mut Page) -> Vec<Row> {
    let rows = page.js(
        "[...document.querySelectorAll('#events li')].map(li => [li.className, \
         ...['.time', '.id', '.type', '.data'].map(c => li.querySelector(c).textContent)])",
    );
    let text = |v: &Value| v.as_str().expect("text").to_string();
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| Row {
            kind: text(&r[0]),
            time: text(&r[1]),
            id: text(&r[2]),
            event: text(&r[3]),
            data: text(&r[4]),
        })
        .collect()
}

/// The text of the element with this id.
fn text(page: &mut Page, id: &str) -> String {
    let v = page.js(&format!("document.getElementById({}).textContent", lit(id)));
    v.as_str().expect("text").to_string()
}

/// Waits until a JavaScript condition holds; fails showing the page's state.
fn wait(page: &mut Page, condition: &str, what: &str) {
    if !page.wait_for(condition, WAIT) {
        let (state, rows) = (text(page, "state"), rows(page));
        panic!("timed out waiting until {what}\nstate: {state:?}\nrows: {rows:#?}");
    }
}

fn state_is(state: &str) -> String {
    format!(
        "document.getElementById('state').dataset.state === {}",
        lit(state)
    )
}

fn shows_id(id: &str) -> String {
    format!(
        "[...document.querySelectorAll('#events .id')].some(e => e.textContent === {})",
        lit(id)
    )
}

/// Sets form fields by id, as typing would.
fn fill(page: &mut Page, fields: &[(&str, &str)]) {
    for (id, value) in fields {
        page.js(&format!(
            "document.getElementById({}).value = {}",
            lit(id),
            lit(value)
        ));
    }
}

fn click(page: &mut Page, selector: &str) {
    page.js(&format!(
        "document.querySelector({}).click()",
        lit(selector)
    ));
}

/// A browser on the hub's page, without waiting for its stream.
fn visit(hub: &Hub) -> Option<Page> {
    let mut page = Page::launch()?;
    page.goto(&format!("http://{}/", hub.addr));
    Some(page)
}

/// A browser on the hub's page once its stream is open.
fn open(hub: &Hub) -> Option<Page> {
    let mut page = visit(hub)?;
    wait(&mut page, &state_is("open"), "the page's stream is open");
    Some(page)
}

#[test]
fn page_shows_a_published_event_within_a_second() {
    let hub = Hub::start(&[]);
    let Some(mut page) = open(&hub) else { return };
    assert_eq!(text(&mut page, "state"), "open · all topics");
    assert_eq!(text(&mut page, "count"), "0 events");

    let published = Instant::now();
    let id = hub.publish("orders", "hello");
    wait(&mut page, &shows_id(&id), "the event shows");
    let took = published.elapsed();
    assert!(took < Duration::from_secs(1), "shown after {took:?}");
    let row = rows(&mut page).remove(0);
    assert_eq!(
        (&*row.kind, &*row.id, &*row.event, &*row.data),
        ("event", &*id, "message", "hello")
    );
    assert!(
        row.time.len() == 12 && row.time.as_bytes()[2] == b':',
        "time {:?}",
        row.time
    );
    assert_eq!(text(&mut page, "count"), "1 event");

    // A named type the page listens for by default.
    let r = hub.post("/events?topic=orders&event=created", b"{\"n\":2}", "");
    let named = json_field(&r.text(), "id");
    wait(&mut page, &shows_id(&named), "the named event shows");
    assert_eq!(rows(&mut page)[0].event, "created");

    // A new topic filter reconnects; events of other topics stay away.
    fill(&mut page, &[("topics", "orders, audit")]);
    click(&mut page, "#subscribe button");
    wait(
        &mut page,
        "document.getElementById('state').textContent === 'open · topics orders, audit'",
        "the stream reopens with the new topics",
    );
    let other = hub.publish("other", "not for this page");
    let audit = hub.publish("audit", "for this page");
    wait(&mut page, &shows_id(&audit), "the audit event shows");
    assert!(!rows(&mut page).iter().any(|r| r.id == other));
    assert_eq!(text(&mut page, "count"), "3 events");
    assert_eq!(page.errors(), Vec::<String>::new(), "console errors");
}

#[test]
fn event_data_is_shown_as_text_and_never_runs() {
    let hub = Hub::start(&[]);
    let Some(mut page) = open(&hub) else { return };
    let hostile = [
        "<img src=x onerror=alert(1)>",
        "<script>window.ran = true</script>",
        "<b onmouseover=\"window.ran = true\">bold</b>",
    ];
    let ids: Vec<String> = hostile.iter().map(|d| hub.publish("t", d)).collect();
    wait(&mut page, &shows_id(&ids[2]), "the last event shows");
    let shown: Vec<(String, String)> = rows(&mut page)
        .into_iter()
        .rev()
        .map(|r| (r.id, r.data))
        .collect();
    let sent: Vec<(String, String)> = ids
        .into_iter()
        .zip(hostile.iter().map(|d| d.to_string()))
        .collect();
    assert_eq!(shown, sent);
    assert_eq!(
        page.js("document.querySelectorAll('#events img, #events script, #events b').length"),
        0,
        "event data became elements"
    );
    assert_eq!(page.js("window.ran === undefined"), true, "event data ran");
    assert_eq!(page.dialogs, Vec::<String>::new(), "dialogs opened");
    assert_eq!(page.errors(), Vec::<String>::new(), "console errors");
}

#[test]
fn publish_form_shows_the_answer_and_the_errors() {
    let hub = Hub::start(&["--publish-token", "s3cret"]);
    let Some(mut page) = open(&hub) else { return };
    let answer_is = |class: &str| {
        format!(
            "document.getElementById('answer').className === {}",
            lit(class)
        )
    };
    fill(
        &mut page,
        &[
            ("pub-topic", "orders"),
            ("pub-event", "shipped"),
            ("pub-data", "two\nlines"),
            ("pub-token", "wrong"),
        ],
    );
    click(&mut page, "#publish button");
    wait(&mut page, &answer_is("error"), "the refusal shows");
    assert_eq!(
        text(&mut page, "answer"),
        "401 Unauthorized {\"error\":\"missing or wrong publish token\"}"
    );
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);

    fill(&mut page, &[("pub-token", "s3cret")]);
    click(&mut page, "#publish button");
    wait(&mut page, &answer_is("ok"), "the answer shows");
    let answer = text(&mut page, "answer");
    let json = answer.strip_prefix("200 OK ").expect(&answer);
    let id = json_field(json, "id");
    assert_eq!(json_field(json, "topic"), "orders");
    assert_eq!(json_field(json, "receivers"), "1", "the page itself");
    // The form made the page listen for the type it published.
    wait(&mut page, &shows_id(&id), "the published event shows");
    let row = rows(&mut page).remove(0);
    assert_eq!((&*row.event, &*row.data), ("shipped", "two\nlines"));

    fill(&mut page, &[("pub-event", "ssehub:mine")]);
    click(&mut page, "#publish button");
    wait(&mut page, &answer_is("error"), "the second refusal shows");
    assert_eq!(
        text(&mut page, "answer"),
        "400 Bad Request {\"error\":\"event names starting with \\\"ssehub:\\\" are reserved\"}"
    );
}

#[test]
fn subscribe_token_field_opens_a_guarded_stream() {
    let hub = Hub::start(&["--subscribe-token", "letmein"]);
    let Some(mut page) = visit(&hub) else { return };
    wait(&mut page, &state_is("closed"), "the refusal shows");
    wait(
        &mut page,
        "document.getElementById('state').textContent.includes('401 missing or wrong subscribe token')",
        "the refusal names its reason",
    );
    fill(&mut page, &[("token", "letmein")]);
    click(&mut page, "#subscribe button");
    wait(
        &mut page,
        &state_is("open"),
        "the stream opens with the token",
    );
    let id = hub.publish("t", "guarded");
    wait(&mut page, &shows_id(&id), "the event shows");
}

#[test]
fn page_retries_a_stream_the_hub_refused_for_lack_of_room() {
    let hub = Hub::start(&["--max-subscribers", "1", "--heartbeat", "1"]);
    let mut taken = hub.subscribe("/events", "");
    taken.next_block();
    let Some(mut page) = visit(&hub) else { return };
    wait(
        &mut page,
        "document.getElementById('state').textContent\
           .startsWith('closed: 503 too many subscribers · attempt 1 in 1 s')",
        "the refusal and the retry show",
    );
    taken.close();
    wait(&mut page, &state_is("open"), "a retry gets the freed place");
    let id = hub.publish("t", "room again");
    wait(&mut page, &shows_id(&id), "the event shows");
}

#[test]
fn page_rides_out_a_hub_restart_with_a_gap_marker() {
    let args = ["--retry-ms", "200"];
    let hub = Hub::start(&args);
    let addr = hub.addr;
    let Some(mut page) = open(&hub) else { return };
    let before = hub.publish("t", "before");
    wait(&mut page, &shows_id(&before), "the first event shows");

    drop(hub);
    wait(&mut page, &state_is("reconnecting"), "the page reconnects");
    let state = text(&mut page, "state");
    assert!(
        state.starts_with("reconnecting · attempt ")
            && state.ends_with(&format!(" · resuming from Last-Event-ID {before}")),
        "{state}"
    );

    let hub = Hub::start_with(
        &args,
        Start {
            bind: Some(addr),
            ..Start::default()
        },
    );
    wait(
        &mut page,
        "document.querySelector('#events li.gap') !== null",
        "the gap marker shows",
    );
    wait(&mut page, &state_is("open"), "the stream is open again");
    let after = hub.publish("t", "after");
    wait(&mut page, &shows_id(&after), "a new live event shows");

    let rows = rows(&mut page);
    let shown: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (&*r.kind, &*r.id, &*r.event)).collect();
    assert_eq!(
        shown,
        [
            ("event", &*after, "message"),
            ("gap", "no id", "ssehub:gap"),
            ("event", &*before, "message"),
        ]
    );
    assert_eq!(
        rows[1].data,
        format!(
            "missed events after {before}; oldest still available: none\n\
             {{\"last_event_id\":\"{before}\",\"oldest_available\":null}}"
        )
    );
}

/// SPEC "Shutdown": clients reconnect elsewhere. The browser keeps its
/// connection to the hub alive, so its subscribe reaches the hub after the
/// hub has stopped accepting and closed its registry; the answer must be one
/// that `EventSource` retries (a 503 makes it give up for good), and the
/// retry reaches the next hub on the address.
#[test]
fn event_source_retries_a_hub_that_is_shutting_down() {
    let args = ["--retry-ms", "200", "--max-event-bytes", "1000000"];
    let mut hub = Hub::start(&args);
    let addr = hub.addr;
    let Some(mut page) = Page::launch() else {
        return;
    };
    page.goto(&format!("http://{addr}/healthz"));
    let stuck = crate::shutdown::stuck_subscriber(&hub);
    hub.signal(libc::SIGTERM);
    // On the page's kept-alive connection: publish until the hub says it is
    // shutting down, then subscribe at once, on that same connection.
    let status = page.js(
        "(async () => { \
           const until = Date.now() + 2000; let status; \
           do { status = (await fetch('/events?topic=probe', { method: 'POST', body: '' })).status; } \
           while (status !== 503 && Date.now() < until); \
           window.seen = []; \
           const es = new EventSource('/events?topic=t'); \
           es.onopen = () => seen.push('open'); \
           es.onerror = () => seen.push('error ' + es.readyState); \
           es.onmessage = (e) => seen.push('message ' + e.data); \
           return status; })()",
    );
    assert_eq!(status, 503, "publishing was never refused as shutting down");
    let wait = |page: &mut Page, condition: &str, what: &str| {
        if !page.wait_for(condition, WAIT) {
            panic!("timed out waiting until {what}: {}", page.js("seen"));
        }
    };
    wait(&mut page, "seen.length >= 2", "the stream opens and ends");
    // readyState 0: CONNECTING, the browser will retry; 2 would be CLOSED.
    assert_eq!(
        page.js("seen.slice(0, 2)"),
        serde_json::json!(["open", "error 0"])
    );
    assert_eq!(
        hub.wait_exit(Duration::from_secs(3)).map(|s| s.code()),
        Some(Some(0))
    );
    drop(stuck);
    let opened = "seen.filter(s => s === 'open').length";
    let before = page.js(opened);
    let next = Hub::start_with(
        &args,
        Start {
            bind: Some(addr),
            ..Start::default()
        },
    );
    wait(
        &mut page,
        &format!("{opened} > {before} && seen[seen.length - 1] === 'open'"),
        "the browser reconnects to the next hub",
    );
    next.publish("t", "from the next hub");
    wait(
        &mut page,
        "seen.includes('message from the next hub')",
        "the next hub's event arrives",
    );
    assert!(
        !page.js("seen").to_string().contains("error 2"),
        "the browser gave up: {}",
        page.js("seen")
    );
}

/// A page on an origin of its own: a one-page HTTP server on another port,
/// for as long as the value lives.
struct Site {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl Site {
    fn start() -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
        let addr = listener.local_addr().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let body = "<!doctype html><title>elsewhere</title><p>another origin</p>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Site { addr, stopped }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept so that the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn another_origin_subscribes_only_when_cors_allows_it() {
    let site = Site::start();
    let Some(mut page) = Page::launch() else {
        return;
    };
    page.goto(&format!("{}/", site.origin()));
    for (cors, allowed) in [
        (None, false),
        (Some(site.origin()), true),
        (Some("http://127.0.0.1:1".to_string()), false),
        (Some("*".to_string()), true),
    ] {
        let hub = match &cors {
            Some(origin) => Hub::start(&["--cors-origin", origin]),
            None => Hub::start(&[]),
        };
        page.js(&format!(
            "window.opened = false; window.result = null; \
             window.es = new EventSource('http://{}/events?topic=x'); \
             es.onopen = () => {{ window.opened = true; }}; \
             es.onmessage = (e) => {{ window.result = 'got ' + e.data; es.close(); }}; \
             es.onerror = () => {{ if (!window.opened) window.result = 'refused'; es.close(); }}",
            hub.addr
        ));
        wait(
            &mut page,
            "window.opened || window.result !== null",
            "the stream opens or fails",
        );
        if page.js("window.opened") == true {
            hub.publish("x", "hello");
        }
        wait(&mut page, "window.result !== null", "the stream ends");
        let expected = if allowed { "got hello" } else { "refused" };
        assert_eq!(page.js("window.result"), expected, "--cors-origin {cors:?}");
    }
}

#[test]
fn native_event_source_gets_multiline_data_and_names_exactly() {
    let hub = Hub::start(&[]);
    let Some(mut page) = visit(&hub) else { return };
    page.js("window.got = []; window.nativeOpen = false; \
         const es = new EventSource('/events?topic=native'); \
         es.onopen = () => { window.nativeOpen = true; }; \
         for (const type of ['message', 'order.created', 'with space', '名前']) \
           es.addEventListener(type, (e) => got.push([e.type, e.data, e.lastEventId]));");
    wait(&mut page, "window.nativeOpen", "the stream opens");
    // (`event=` in the query, the type the browser reports, body, the data
    // the browser reports)
    let sent = [
        ("", "message", "line one\nline two", "line one\nline two"),
        (
            "order.created",
            "order.created",
            "a\r\nb\rc\nd",
            "a\nb\nc\nd",
        ),
        (
            "with%20space",
            "with space",
            "\nblank ends\n",
            "\nblank ends\n",
        ),
        (
            "%E5%90%8D%E5%89%8D",
            "名前",
            "ünï ✓ data: x",
            "ünï ✓ data: x",
        ),
    ];
    let mut expected = Vec::new();
    for (event, name, body, data) in sent {
        let query = match event {
            "" => "topic=native".to_string(),
            e => format!("topic=native&event={e}"),
        };
        let r = hub.post(&format!("/events?{query}"), body.as_bytes(), "");
        assert_eq!(r.status, 200, "{}", r.text());
        expected.push(serde_json::json!([name, data, json_field(&r.text(), "id")]));
    }
    wait(
        &mut page,
        &format!("got.length >= {}", expected.len()),
        "every event arrives",
    );
    assert_eq!(page.js("got"), Value::Array(expected));
}

#[test]
fn page_fits_a_360_px_screen() {
    let hub = Hub::start(&[]);
    let Some(mut page) = Page::launch() else {
        return;
    };
    page.viewport(360, 740, true);
    page.goto(&format!("http://{}/", hub.addr));
    wait(&mut page, &state_is("open"), "the page's stream is open");
    let long = format!(
        "{}\n{{\"url\":\"https://example.com/{}\"}}",
        "x".repeat(300),
        "y".repeat(200)
    );
    let id = hub.publish("a-rather-long-topic-name-for-a-small-screen", &long);
    wait(&mut page, &shows_id(&id), "the event shows");
    assert_eq!(
        page.js("document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "the page scrolls sideways at 360 px"
    );
    let png = page.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(concat!(env!("CARGO_TARGET_TMPDIR"), "/page-360.png"), png)
        .expect("save the screenshot");
    assert_eq!(page.errors(), Vec::<String>::new(), "console errors");
}

/// The picture in the README: `make screenshot` saves it as docs/page.png.
#[test]
fn screenshot_of_the_page_with_events() {
    let args = ["--retry-ms", "200"];
    let hub = Hub::start(&args);
    let addr = hub.addr;
    let Some(mut page) = Page::launch() else {
        return;
    };
    page.viewport(1200, 960, false);
    page.goto(&format!("http://{addr}/"));
    wait(&mut page, &state_is("open"), "the page's stream is open");
    let post = |hub: &Hub, query: &str, body: &str| {
        let r = hub.post(&format!("/events?{query}"), body.as_bytes(), "");
        assert_eq!(r.status, 200, "{}", r.text());
        json_field(&r.text(), "id")
    };
    post(
        &hub,
        "topic=orders&event=created",
        "{\"order\":1041,\"total\":\"19.90\"}",
    );
    post(
        &hub,
        "topic=orders&event=updated",
        "{\n  \"order\": 1041,\n  \"status\": \"paid\"\n}",
    );
    let last = post(&hub, "topic=chat", "hello from curl");
    wait(&mut page, &shows_id(&last), "the events show");
    drop(hub);
    wait(&mut page, &state_is("reconnecting"), "the page reconnects");
    let hub = Hub::start_with(
        &args,
        Start {
            bind: Some(addr),
            ..Start::default()
        },
    );
    wait(&mut page, &state_is("open"), "the stream is open again");
    post(
        &hub,
        "topic=orders&event=created",
        "{\"order\":1042,\"total\":\"7.50\"}",
    );
    fill(
        &mut page,
        &[("pub-topic", "chat"), ("pub-data", "<b>shown as text</b>")],
    );
    click(&mut page, "#publish button");
    wait(
        &mut page,
        "document.getElementById('answer').className === 'ok'",
        "the answer shows",
    );
    wait(
        &mut page,
        "document.querySelectorAll('#events li').length === 6",
        "every event shows",
    );
    let png = page.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::env::var("PAGE_PNG")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/page.png").into());
    std::fs::write(&path, png).expect("save the screenshot");
}

#[test]
fn page_subscribes_with_a_signed_token_and_shows_a_refusal_and_the_expiry() {
    use crate::tokens::{grants, hs256, now, SECRET};
    let hub = Hub::start(&["--jwt-secret", SECRET, "--heartbeat", "1"]);
    let Some(mut page) = visit(&hub) else { return };
    let state_says = |text: &str| {
        format!(
            "document.getElementById('state').textContent === {}",
            lit(text)
        )
    };
    wait(
        &mut page,
        &state_says("refused: 401 missing token · set the token and subscribe again"),
        "the page asks for a token",
    );

    // A token for user 1 asking for user 2's topic.
    let expiring = serde_json::json!({
        "sub": "user-1",
        "exp": now() + 6,
        "ssehub": {"publish": ["users/1/*"], "subscribe": ["users/1/*"]},
    });
    let token = hs256(&expiring);
    fill(&mut page, &[("topics", "users/2/x"), ("token", &token)]);
    click(&mut page, "#subscribe button");
    wait(
        &mut page,
        &state_says("refused: 403 topic not granted: users/2/x · change the topics or the token"),
        "the refused topic shows",
    );

    fill(&mut page, &[("topics", "users/1/x")]);
    click(&mut page, "#subscribe button");
    wait(&mut page, &state_is("open"), "the granted topic opens");
    // The publish form sends the signed token as Authorization: Bearer.
    fill(
        &mut page,
        &[
            ("pub-topic", "users/1/x"),
            ("pub-data", "for user 1"),
            ("pub-token", &token),
        ],
    );
    click(&mut page, "#publish button");
    wait(
        &mut page,
        "[...document.querySelectorAll('#events .data')].some(e => e.textContent === 'for user 1')",
        "the published event shows",
    );
    fill(&mut page, &[("pub-topic", "users/2/x")]);
    click(&mut page, "#publish button");
    wait(
        &mut page,
        "document.getElementById('answer').className === 'error'",
        "the refused publish shows",
    );
    assert_eq!(
        text(&mut page, "answer"),
        "403 Forbidden {\"error\":\"topic not granted: users/2/x\"}"
    );

    wait(
        &mut page,
        "document.querySelector('#events li.expired') !== null",
        "the expiry shows",
    );
    wait(
        &mut page,
        &state_says("token expired · paste a new token and subscribe again"),
        "the page asks for a new token",
    );
    let row = rows(&mut page).remove(0);
    assert_eq!((&*row.kind, &*row.event), ("expired", "ssehub:expired"));
    assert!(
        row.data.starts_with("the token expired at "),
        "{}",
        row.data
    );
    assert_eq!(
        page.js("document.activeElement.id"),
        "token",
        "the token field has the focus"
    );

    let fresh = hs256(&grants(&[], &["users/1/*"]));
    fill(&mut page, &[("token", &fresh)]);
    click(&mut page, "#subscribe button");
    wait(
        &mut page,
        &state_is("open"),
        "a new token opens the stream again",
    );
    // The browser reports each refused request; nothing else went wrong.
    let errors = page.errors();
    let refusal = |e: &String| {
        e.starts_with("\"Failed to load resource: the server responded with a status of 40")
            && (e.contains(" 401 ") || e.contains(" 403 "))
    };
    assert!(errors.iter().all(refusal), "console errors: {errors:#?}");
}

/// SPEC "Ending a topic": the stream of an ended topic ends, the browser's
/// reconnect is answered 204, and `EventSource` gives up for good.
#[test]
fn event_source_stops_for_good_after_the_204_of_an_ended_topic() {
    let hub = Hub::start_with(
        &["--retry-ms", "200"],
        Start {
            env: vec![("RUST_LOG", "ssehub=debug")],
            ..Start::default()
        },
    );
    let Some(mut page) = Page::launch() else {
        return;
    };
    page.goto(&format!("http://{}/healthz", hub.addr));
    page.js("window.seen = []; \
         window.es = new EventSource('/events?topic=job'); \
         es.onopen = () => seen.push('open'); \
         es.onerror = () => seen.push('error ' + es.readyState); \
         es.addEventListener('ssehub:closed', (e) => seen.push('closed ' + e.data));");
    let wait = |page: &mut Page, condition: &str, what: &str| {
        if !page.wait_for(condition, WAIT) {
            panic!("timed out waiting until {what}: {}", page.js("seen"));
        }
    };
    wait(&mut page, "seen.includes('open')", "the stream opens");
    crate::topics::end_topic(&hub, "job", "done");
    wait(
        &mut page,
        "seen.includes('error 2')",
        "the browser gives up",
    );
    // 0: CONNECTING after the stream's end; 2: CLOSED after the 204.
    let want = serde_json::json!(["open", "closed done", "error 0", "error 2"]);
    assert_eq!(page.js("seen"), want);
    // Three times the longest retry (200 ms + 50%): no request after it.
    thread::sleep(Duration::from_millis(900));
    assert_eq!(
        page.js("[seen, es.readyState]"),
        serde_json::json!([want, 2])
    );
    let answered = hub.log().matches("answered 204").count();
    assert_eq!(answered, 1, "{}", hub.log());
}

#[test]
fn page_closes_a_topic_shows_it_ended_and_counts_subscribers() {
    let hub = Hub::start(&["--retry-ms", "200"]);
    let Some(mut page) = open(&hub) else { return };
    let _other = hub.subscribe("/events?topic=job", "");
    fill(&mut page, &[("topics", "job")]);
    click(&mut page, "#subscribe button");
    wait(&mut page, &state_is("open"), "the stream of job opens");
    // A hub without tokens lists its streams to a loopback page.
    wait(
        &mut page,
        "document.querySelector('#subscribers li[data-topic=\"job\"] .n')?.textContent === '2'",
        "the page counts two subscribers of job",
    );
    fill(&mut page, &[("pub-topic", "job"), ("pub-data", "finished")]);
    click(&mut page, "#close-topic");
    wait(
        &mut page,
        &state_is("ended"),
        "the page shows the topic ended",
    );
    assert_eq!(
        text(&mut page, "state"),
        "ended · the topics were closed (204), the browser does not reconnect"
    );
    let row = rows(&mut page).remove(0);
    assert_eq!(
        (&*row.kind, &*row.event, &*row.data),
        ("closed", "ssehub:closed", "finished")
    );
    assert!(text(&mut page, "answer").starts_with("200 OK "));
    click(&mut page, "#close-topic");
    wait(
        &mut page,
        "document.getElementById('answer').className === 'error'",
        "the second close is refused",
    );
    assert_eq!(
        text(&mut page, "answer"),
        "410 Gone {\"error\":\"topic closed\"}"
    );
}
