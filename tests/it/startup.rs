//! Options, environment variables, `--help`, refusals at startup, logs.

use std::process::{Command, Stdio};

use crate::harness::{Hub, Start};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssehub"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ssehub");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_option_with_its_default() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for (opt, default) in [
        ("--bind", "127.0.0.1:8080"),
        ("--heartbeat", "30"),
        ("--retry-ms", "3000"),
        ("--history", "10000"),
        ("--history-bytes", "67108864"),
        ("--max-subscribers", "10000"),
        ("--client-queue", "1024"),
        ("--max-event-bytes", "65536"),
    ] {
        let line = out
            .lines()
            .skip_while(|l| !l.contains(opt))
            .take(3)
            .collect::<String>();
        assert!(
            line.contains(&format!("[default: {default}]")),
            "{opt}: {line}"
        );
    }
    for opt in [
        "--publish-token",
        "--subscribe-token",
        "--cors-origin",
        "--redis",
        "--allow-anonymous-publish",
        "SSEHUB_PUBLISH_TOKEN",
    ] {
        assert!(out.contains(opt), "{opt} missing from --help");
    }
}

#[test]
fn bad_values_exit_2_naming_the_option() {
    for (args, name) in [
        (&["--heartbeat", "0"][..], "--heartbeat"),
        (&["--history-bytes", "64k"][..], "--history-bytes"),
        (&["--bind", "nowhere"][..], "--bind"),
        (&["--max-subscribers", "0"][..], "--max-subscribers"),
        (&["--publish-token", ""][..], "--publish-token"),
        (&["--bind", "0.0.0.0:0"][..], "--allow-anonymous-publish"),
        (&["--redis", "http://127.0.0.1:1"][..], "--redis"),
    ] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(name), "{args:?}: {err}");
    }
    let (code, _, err) = run(&[], &[("SSEHUB_CLIENT_QUEUE", "lots")]);
    assert_eq!(code, 2);
    assert!(err.contains("--client-queue"), "{err}");
}

#[test]
fn environment_variables_apply_and_flags_win() {
    let hub = Hub::start_with(
        &["--retry-ms", "1000"],
        Start {
            env: vec![("SSEHUB_RETRY_MS", "50000"), ("SSEHUB_HEARTBEAT", "1")],
            ..Start::default()
        },
    );
    let mut sub = hub.subscribe("/events", "");
    let retry = sub.next_event().retry.unwrap();
    assert!((1000..=1500).contains(&retry), "flag should win: {retry}");
    assert_eq!(sub.next_block(), ":\n\n", "SSEHUB_HEARTBEAT=1 not applied");
}

#[test]
fn public_bind_is_allowed_with_a_token_or_the_flag() {
    let hub = Hub::start_with(
        &["--allow-anonymous-publish"],
        Start {
            bind: Some("0.0.0.0:0".parse().unwrap()),
            ..Start::default()
        },
    );
    assert!(hub.addr.ip().is_unspecified());
    let hub = Hub::start_with(
        &[],
        Start {
            bind: Some("0.0.0.0:0".parse().unwrap()),
            env: vec![("SSEHUB_PUBLISH_TOKEN", "tok")],
            ..Start::default()
        },
    );
    assert!(hub.addr.ip().is_unspecified());
}

#[test]
fn a_busy_port_exits_1() {
    let hub = Hub::start(&[]);
    let (code, _, err) = run(&["--bind", &hub.addr.to_string()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--bind"), "{err}");
}

#[test]
fn refused_requests_are_logged_with_their_reason_and_escaped() {
    let hub = Hub::start(&[]);
    hub.get("/no\\x1b[31mpe");
    assert!(
        hub.wait_log(
            "refused GET /no\\\\x1b[31mpe from 127.0.0.1:",
            std::time::Duration::from_secs(2)
        ),
        "{}",
        hub.log()
    );
    assert!(hub.log().contains(": 404 not found"));
}

#[test]
fn tokens_never_reach_the_log() {
    let hub = Hub::start_with(
        &[
            "--publish-token",
            "pub-SECRET-1",
            "--subscribe-token",
            "sub-SECRET-2",
        ],
        Start {
            env: vec![("RUST_LOG", "debug")],
            ..Start::default()
        },
    );
    hub.post("/events", b"x", "Authorization: Bearer pub-SECRET-1\r\n");
    hub.post("/events", b"x", "Authorization: Bearer wrong-SECRET-3\r\n");
    let mut s = hub.subscribe("/events?token=sub-SECRET-2", "");
    s.next_block();
    hub.get("/events?token=wrong-SECRET-4");
    drop(s);
    assert!(hub.wait_log("refused GET /events", std::time::Duration::from_secs(2)));
    let log = hub.log();
    assert!(!log.contains("SECRET"), "a token reached the log:\n{log}");
}
