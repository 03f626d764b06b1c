//! Signed tokens (SPEC "Signed tokens"): every algorithm, the refusals,
//! per-topic grants on publish, subscribe and replay, expiry, key rotation
//! and the carriers. Tokens are signed here with the keys in tests/keys.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::{poll, Hub, Response, Start, Sub};

pub const SECRET: &str = "a shared HMAC secret of at least 32 bytes";

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims granting `publish` and `subscribe`, valid for a minute.
pub fn grants(publish: &[&str], subscribe: &[&str]) -> Value {
    json!({
        "sub": "user-42",
        "exp": now() + 60,
        "ssehub": {"publish": publish, "subscribe": subscribe},
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    encode(&header, claims, key).expect("sign")
}

pub fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    sign(Algorithm::HS256, None, &key, claims)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The token with its claims swapped for `claims`, the signature kept.
fn forged(token: &str, claims: &Value) -> String {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn hmac_hub(extra: &[&str]) -> Hub {
    let mut args = vec!["--jwt-secret", SECRET, "--heartbeat", "1"];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

/// A 401 for an invalid token: the RFC 6750 challenge and the reason.
fn assert_invalid(r: &Response, reason: &str, json: bool) {
    assert_eq!(r.status, 401, "{reason}: {r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()),
        "{reason}"
    );
    if json {
        assert_eq!(r.error(), reason);
    } else {
        assert_eq!(r.text(), format!("{reason}\n"));
    }
}

/// A refused subscription, as a response.
fn refused(hub: &Hub, target: &str, headers: &str) -> Response {
    let s = hub.try_subscribe(target, headers);
    assert_ne!(s.head.status, 200, "{target} was admitted");
    s.head
}

/// Publishes `data` to `topic` with `token`, asserting a 200.
fn publish(hub: &Hub, token: &str, topic: &str, data: &str) -> String {
    let r = hub.post(
        &format!("/events?topic={topic}"),
        data.as_bytes(),
        &bearer(token),
    );
    assert_eq!(r.status, 200, "publish {topic}: {}", r.text());
    crate::harness::json_field(&r.text(), "id")
}

/// The data of the next events of `sub`, heartbeats skipped.
fn next_data(sub: &mut Sub, n: usize) -> Vec<String> {
    (0..n).map(|_| sub.next_event().data).collect()
}

#[test]
fn every_algorithm_verifies_and_a_forged_token_is_refused() {
    let rsa = EncodingKey::from_rsa_pem(&key("rsa.pem")).unwrap();
    let families: Vec<(Vec<String>, EncodingKey, Vec<Algorithm>)> = vec![
        (
            vec!["--jwt-secret".into(), SECRET.into()],
            EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ),
        (
            vec!["--jwt-public-key".into(), key_path("rsa.pub.pem")],
            rsa,
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        ),
        (
            vec!["--jwt-public-key".into(), key_path("p256.pub.pem")],
            EncodingKey::from_ec_pem(&key("p256.pem")).unwrap(),
            vec![Algorithm::ES256],
        ),
        (
            vec!["--jwt-public-key".into(), key_path("p384.pub.pem")],
            EncodingKey::from_ec_pem(&key("p384.pem")).unwrap(),
            vec![Algorithm::ES384],
        ),
        (
            vec!["--jwt-public-key".into(), key_path("ed25519.pub.pem")],
            EncodingKey::from_ed_pem(&key("ed25519.pem")).unwrap(),
            vec![Algorithm::EdDSA],
        ),
    ];
    let everything = json!({"exp": now() + 60, "ssehub": {"publish": ["*"], "subscribe": ["*"]}});
    for (args, signing, algorithms) in families {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let hub = Hub::start(&args);
        for alg in algorithms {
            let token = sign(alg, None, &signing, &grants(&["orders"], &["orders"]));
            let mut sub = hub.subscribe(&format!("/events?topic=orders&authorization={token}"), "");
            sub.next_block();
            let id = publish(&hub, &token, "orders", &format!("{alg:?}"));
            let ev = sub.next_event();
            assert_eq!((ev.id, ev.data), (Some(id), format!("{alg:?}")));

            // The same signature over wider grants.
            let forgery = forged(&token, &everything);
            let r = hub.post("/events?topic=orders", b"x", &bearer(&forgery));
            assert_invalid(&r, "bad signature", true);
            let r = refused(&hub, &format!("/events?authorization={forgery}"), "");
            assert_invalid(&r, "bad signature", false);
        }
    }
    // Another secret of the same kind.
    let hub = hmac_hub(&[]);
    let other = EncodingKey::from_secret(b"some other secret of 32 bytes or more").unwrap();
    let t = sign(Algorithm::HS256, None, &other, &grants(&["*"], &[]));
    assert_invalid(
        &hub.post("/events", b"x", &bearer(&t)),
        "bad signature",
        true,
    );
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
}

#[test]
fn the_algorithm_comes_from_the_key() {
    use base64::Engine;
    let hub = Hub::start(&["--jwt-public-key", &key_path("rsa.pub.pem")]);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = grants(&["*"], &["*"]);
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    // HS256 keyed with the RSA public key, which is no secret.
    let public = EncodingKey::from_secret(&key("rsa.pub.pem")).unwrap();
    let confused = sign(Algorithm::HS256, None, &public, &claims);
    for token in [none, confused] {
        let r = hub.post("/events", b"x", &bearer(&token));
        assert_invalid(&r, "algorithm not allowed", true);
        let r = refused(&hub, "/events", &bearer(&token));
        assert_invalid(&r, "algorithm not allowed", false);
    }
    assert_eq!(hub.metric("ssehub_events_published_total"), 0);
}

#[test]
fn time_audience_and_issuer_refusals_name_their_reason() {
    let hub = hmac_hub(&[
        "--jwt-audience",
        "hub",
        "--jwt-issuer",
        "https://app.example",
    ]);
    let ok = |extra: Value| {
        let mut c = json!({"aud": "hub", "iss": "https://app.example", "exp": now() + 60,
            "ssehub": {"publish": ["*"], "subscribe": ["*"]}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(&c)
    };
    assert_eq!(
        hub.post("/events", b"x", &bearer(&ok(json!({})))).status,
        200
    );
    for (extra, reason) in [
        (json!({"exp": now() - 1}), "expired"),
        (json!({"nbf": now() + 60}), "not yet valid"),
        (json!({"aud": "other"}), "wrong audience"),
        (json!({"iss": "https://evil.example"}), "wrong issuer"),
        (json!({"exp": "soon"}), "malformed token"),
    ] {
        let t = ok(extra);
        assert_invalid(&hub.post("/events", b"x", &bearer(&t)), reason, true);
        assert_invalid(&refused(&hub, "/events", &bearer(&t)), reason, false);
    }
    // nbf may be up to 5 s ahead (clock skew).
    let skewed = ok(json!({"nbf": now() + 4}));
    assert_eq!(hub.post("/events", b"x", &bearer(&skewed)).status, 200);
    for garbage in ["nonsense", "a.b.c", "Bearer"] {
        let r = hub.post("/events", b"x", &bearer(garbage));
        assert_invalid(&r, "malformed token", true);
    }
    // RFC 6750 §3.1: no token, no error code.
    for r in [hub.post("/events", b"x", ""), refused(&hub, "/events", "")] {
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(hub.post("/events", b"x", "").error(), "missing token");
    assert_eq!(hub.metric("ssehub_events_published_total"), 2);
}

#[test]
fn a_grant_for_one_user_refuses_another_users_topics() {
    let hub = hmac_hub(&[]);
    let admin = hs256(&grants(&["*"], &[]));
    let user1 = hs256(&grants(&["users/1/*"], &["users/1/*"]));
    for topic in ["users/2/x", "users/*", "*", "users/1"] {
        let r = refused(&hub, &format!("/events?topic={topic}"), &bearer(&user1));
        assert_eq!(r.status, 403, "{topic}");
        assert_eq!(r.text(), format!("topic not granted: {topic}\n"));
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                format!(
                    "Bearer error=\"insufficient_scope\", \
                     error_description=\"topic not granted: {topic}\""
                )
                .as_str()
            )
        );
    }
    // One topic not granted refuses the whole subscription.
    let r = refused(
        &hub,
        "/events?topic=users/1/x&topic=users/2/x",
        &bearer(&user1),
    );
    assert_eq!(r.text(), "topic not granted: users/2/x\n");
    let mut sub = hub.subscribe("/events?topic=users/1/x", &bearer(&user1));
    sub.next_block();
    publish(&hub, &admin, "users/1/y", "another topic of user 1");
    let id = publish(&hub, &admin, "users/1/x", "for user 1");
    let ev = sub.next_event();
    assert_eq!((ev.id, ev.data.as_str()), (Some(id), "for user 1"));

    // Publishing outside the grant.
    let r = hub.post("/events?topic=users/2/x", b"x", &bearer(&user1));
    assert_eq!(
        (r.status, r.error()),
        (403, "topic not granted: users/2/x".into())
    );
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer error=\"insufficient_scope\""));
    assert_eq!(
        hub.post("/events?topic=users/1/z", b"x", &bearer(&user1))
            .status,
        200
    );
    let subscriber_only = hs256(&grants(&[], &["*"]));
    let r = hub.post("/events?topic=a", b"x", &bearer(&subscriber_only));
    assert_eq!(r.status, 403);
    // A selector is no topic to publish to.
    let r = hub.post("/events?topic=users/1/*", b"x", &bearer(&admin));
    assert_eq!(r.status, 400);
}

#[test]
fn no_topic_means_every_granted_topic_and_nothing_else() {
    let hub = hmac_hub(&[]);
    let admin = hs256(&grants(&["*"], &[]));
    let reader = hs256(&grants(&[], &["a", "b/*"]));
    let mut sub = hub.subscribe("/events", &bearer(&reader));
    sub.next_block();
    for topic in ["c", "a", "b", "b/1", "bb/1", "b/2/3"] {
        publish(&hub, &admin, topic, topic);
    }
    assert_eq!(next_data(&mut sub, 3), ["a", "b/1", "b/2/3"]);
    publish(&hub, &admin, "a", "sentinel");
    assert_eq!(next_data(&mut sub, 1), ["sentinel"]);
}

#[test]
fn a_replay_yields_only_granted_topics() {
    let hub = hmac_hub(&[]);
    let admin = hs256(&grants(&["*"], &[]));
    let narrow = hs256(&grants(&[], &["users/1/*"]));
    for (topic, data) in [
        ("users/1/a", "mine 1"),
        ("users/2/a", "theirs"),
        ("secret", "secret"),
        ("users/1/b", "mine 2"),
        ("users/10/a", "theirs too"),
    ] {
        publish(&hub, &admin, topic, data);
    }
    for target in [
        "/events?lastEventId=0-0",
        "/events?lastEventId=0-0&topic=users/1/*",
    ] {
        let mut sub = hub.subscribe(target, &bearer(&narrow));
        sub.next_block();
        let gap = sub.next_event();
        assert_eq!(gap.event.as_deref(), Some("ssehub:gap"), "{target}");
        assert_eq!(next_data(&mut sub, 2), ["mine 1", "mine 2"], "{target}");
        publish(&hub, &admin, "users/2/a", "live, theirs");
        publish(&hub, &admin, "users/1/c", "live, mine");
        assert_eq!(next_data(&mut sub, 1), ["live, mine"], "{target}");
    }
    // A reconnect from an id in the middle, by the header.
    let mut sub = hub.subscribe(
        "/events",
        &format!("{}Last-Event-ID: 0-0\r\n", bearer(&narrow)),
    );
    sub.next_block();
    sub.next_event();
    let got = next_data(&mut sub, 3);
    assert_eq!(got, ["mine 1", "mine 2", "live, mine"]);
}

#[test]
fn a_stream_ends_at_its_tokens_exp_and_the_same_token_is_refused() {
    let hub = hmac_hub(&[]);
    let exp = now() + 2;
    let token = hs256(&json!({"exp": exp, "ssehub": {"subscribe": ["t"]}}));
    let mut sub = hub.subscribe(&format!("/events?authorization={token}"), "");
    sub.next_block();
    let ev = loop {
        let ev = sub.next_event();
        if ev.event.is_some() {
            break ev;
        }
    };
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(
        ev.raw,
        format!("event: ssehub:expired\ndata: {{\"exp\":{exp}}}\n\n")
    );
    assert!(
        at >= Duration::from_secs(exp) && at < Duration::from_secs(exp + 1),
        "ended at {at:?}, exp {exp}"
    );
    assert!(sub.ends_cleanly(Duration::from_secs(2)), "{}", sub.tail());
    assert!(poll(Duration::from_secs(2), || hub
        .metric("ssehub_subscribers")
        == 0));
    let r = refused(&hub, &format!("/events?authorization={token}"), "");
    assert_invalid(&r, "expired", false);
}

#[test]
fn an_exp_beyond_the_clocks_never_ends_the_stream() {
    let hub = hmac_hub(&[]);
    let token = hs256(&json!({"exp": u64::MAX, "ssehub": {"subscribe": ["t"], "publish": ["t"]}}));
    let mut sub = hub.subscribe("/events", &bearer(&token));
    sub.next_block();
    let id = publish(&hub, &token, "t", "still open");
    let ev = sub.next_event();
    assert_eq!((ev.id, ev.data.as_str()), (Some(id), "still open"));
}

/// The JWKS file of a test, in a place of its own.
fn jwks_copy(from: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "jwks-{}-{}.json",
        std::process::id(),
        crate::harness::unique()
    ));
    std::fs::write(&path, key(from)).unwrap();
    path
}

#[test]
fn jwks_rotates_on_sighup_without_dropping_streams() {
    let path = jwks_copy("jwks-old.json");
    let hub = Hub::start(&["--jwks", path.to_str().unwrap(), "--heartbeat", "1"]);
    let rsa = EncodingKey::from_rsa_pem(&key("rsa.pem")).unwrap();
    let p256 = EncodingKey::from_ec_pem(&key("p256.pem")).unwrap();
    let both = grants(&["*"], &["*"]);
    let old = sign(Algorithm::RS256, Some("old"), &rsa, &both);
    let new = sign(Algorithm::ES256, Some("new"), &p256, &both);
    assert_invalid(
        &refused(&hub, "/events", &bearer(&new)),
        "unknown key id",
        false,
    );
    let mut open = hub.subscribe("/events", &bearer(&old));
    open.next_block();

    std::fs::write(&path, key("jwks-new.json")).unwrap();
    hub.signal(libc::SIGHUP);
    assert!(
        hub.wait_log("reloaded --jwks", Duration::from_secs(5)),
        "{}",
        hub.log()
    );
    assert!(hub.log().contains("2 keys (new, ed)"), "{}", hub.log());
    let id = publish(&hub, &new, "t", "after the rotation");
    let ev = open.next_event();
    assert_eq!((ev.id, ev.data.as_str()), (Some(id), "after the rotation"));
    assert_invalid(
        &refused(&hub, "/events", &bearer(&old)),
        "unknown key id",
        false,
    );
    hub.subscribe("/events", &bearer(&new));

    // A broken file keeps the keys in use.
    std::fs::write(&path, b"{\"keys\": [").unwrap();
    hub.signal(libc::SIGHUP);
    assert!(
        hub.wait_log("reload failed", Duration::from_secs(5)),
        "{}",
        hub.log()
    );
    assert!(
        hub.log().contains("keeping the 2 keys in use"),
        "{}",
        hub.log()
    );
    publish(&hub, &new, "t", "still verified");
    assert_eq!(open.next_event().data, "still verified");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_cookie_and_the_query_carry_tokens() {
    let hub = hmac_hub(&["--publish-token", "shared-publisher"]);
    let token = hs256(&grants(&["t"], &["t"]));
    let cookie = format!("Cookie: theme=dark; ssehub_authorization={token}\r\n");
    let mut sub = hub.subscribe("/events", &cookie);
    sub.next_block();
    let r = hub.post("/events?topic=t", b"by cookie", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sub.next_event().data, "by cookie");
    // The shared token keeps working beside signed ones, for every topic.
    let r = hub.post("/events?topic=any", b"shared", &bearer("shared-publisher"));
    assert_eq!(r.status, 200);
    hub.subscribe(&format!("/events?topic=t&authorization={token}"), "");
    // The query carrier is for subscribing only.
    let r = hub.post(&format!("/events?topic=t&authorization={token}"), b"x", "");
    assert_eq!(r.status, 401);
}

#[test]
fn anonymous_topics_need_no_token() {
    let hub = hmac_hub(&["--anonymous-topics", "news,public/*"]);
    let admin = hs256(&grants(&["*"], &[]));
    let mut anon = hub.subscribe("/events", "");
    anon.next_block();
    hub.subscribe("/events?topic=public/a&topic=news", "");
    let r = refused(&hub, "/events?topic=private", "");
    assert_eq!((r.status, r.text()), (401, "missing token\n".into()));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let mut user = hub.subscribe("/events", &bearer(&hs256(&grants(&[], &["private"]))));
    user.next_block();
    for topic in ["private", "other", "public/x", "news"] {
        publish(&hub, &admin, topic, topic);
    }
    assert_eq!(next_data(&mut anon, 2), ["public/x", "news"]);
    assert_eq!(next_data(&mut user, 3), ["private", "public/x", "news"]);
    // A bad token is refused even for an anonymous topic.
    let r = refused(&hub, "/events?topic=news", &bearer("nonsense"));
    assert_eq!(r.status, 401);
}

#[test]
fn selectors_work_without_tokens_and_are_capped() {
    let hub = Hub::start(&[]);
    let mut sub = hub.subscribe("/events?topic=users/*&topic=news", "");
    sub.next_block();
    for topic in ["users", "users/1", "newsy", "news", "users/2/x"] {
        hub.publish(topic, topic);
    }
    assert_eq!(next_data(&mut sub, 3), ["users/1", "news", "users/2/x"]);
    let many: String = (0..65).map(|i| format!("topic=t{i}&")).collect();
    let r = refused(&hub, &format!("/events?{many}"), "");
    assert_eq!((r.status, r.text()), (400, "more than 64 topics\n".into()));
    let enough: String = (0..64).map(|i| format!("topic=t{i}&")).collect();
    hub.subscribe(&format!("/events?{enough}"), "");
}

#[test]
fn logs_name_the_sub_and_never_the_token() {
    let hub = Hub::start_with(
        &["--jwt-secret", SECRET, "--heartbeat", "1"],
        Start {
            env: vec![("RUST_LOG", "debug")],
            ..Start::default()
        },
    );
    let good = hs256(&grants(&["*"], &["users/42/*"]));
    let expired = hs256(&json!({"sub": "user-42", "exp": now() - 10}));
    let mut sub = hub.subscribe(
        &format!("/events?topic=users/42/a&authorization={good}"),
        "",
    );
    sub.next_block();
    publish(&hub, &good, "users/42/a", "x");
    sub.next_event();
    refused(
        &hub,
        &format!("/events?topic=users/1/a&authorization={good}"),
        "",
    );
    refused(&hub, &format!("/events?authorization={expired}"), "");
    hub.post("/events", b"x", &bearer(&expired));
    hub.post(
        "/events",
        b"x",
        &format!("Cookie: ssehub_authorization={expired}\r\n"),
    );
    let started = Instant::now();
    assert!(
        hub.wait_log("sub=user-42", Duration::from_secs(5)),
        "{}",
        hub.log()
    );
    assert!(hub.wait_log("refused POST", Duration::from_secs(5)));
    let log = hub.log();
    for token in [&good, &expired] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token in the log:\n{log}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
