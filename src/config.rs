//! Command-line options and `SSEHUB_*` variables → one typed `Config`, with
//! every default in one place. Every startup refusal is a `ConfigError`
//! naming the option; nothing else in the crate reads argv or the environment.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ssehub",
    version,
    about = "A Server-Sent Events hub: POST events, subscribe with EventSource, replay with Last-Event-ID.",
    after_help = "Every option also reads SSEHUB_<NAME> (e.g. SSEHUB_PUBLISH_TOKEN); the flag wins. RUST_LOG sets the log level (default info)."
)]
struct Args {
    /// Listen address; port 0 picks a free port
    #[arg(
        long,
        env = "SSEHUB_BIND",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    bind: SocketAddr,

    /// Idle seconds after which a subscriber gets a `:` comment line
    #[arg(long, env = "SSEHUB_HEARTBEAT", value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    heartbeat: u64,

    /// Base reconnection delay sent as `retry:`; each stream adds up to 50% jitter
    #[arg(long, env = "SSEHUB_RETRY_MS", value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    retry_ms: u64,

    /// Events kept for replay (all topics together); 0 disables replay
    #[arg(
        long,
        env = "SSEHUB_HISTORY",
        value_name = "N",
        default_value_t = 10_000
    )]
    history: usize,

    /// Bytes of encoded events kept for replay; the oldest go first
    #[arg(long, env = "SSEHUB_HISTORY_BYTES", value_name = "BYTES", default_value_t = 64 << 20)]
    history_bytes: usize,

    /// Open streams at once; one more is answered 503 (clamped to what the machine can hold)
    #[arg(long, env = "SSEHUB_MAX_SUBSCRIBERS", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_subscribers: u64,

    /// Events queued for one subscriber; one further behind while its client is not reading is disconnected
    #[arg(long, env = "SSEHUB_CLIENT_QUEUE", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    client_queue: u64,

    /// Largest publish body in bytes; larger is 413
    #[arg(long, env = "SSEHUB_MAX_EVENT_BYTES", value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    max_event_bytes: u64,

    /// When set, publishing needs `Authorization: Bearer TOKEN`
    #[arg(
        long,
        env = "SSEHUB_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    publish_token: Option<String>,

    /// When set, subscribing needs `Authorization: Bearer TOKEN` or `?token=TOKEN`
    #[arg(
        long,
        env = "SSEHUB_SUBSCRIBE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    subscribe_token: Option<String>,

    /// Access-Control-Allow-Origin for /events (`*` allowed); enables preflight OPTIONS
    #[arg(long, env = "SSEHUB_CORS_ORIGIN", value_name = "ORIGIN")]
    cors_origin: Option<String>,

    /// Use Redis as the shared event log, so several hubs act as one (redis://[:PASSWORD@]HOST:PORT[/DB])
    #[arg(long, env = "SSEHUB_REDIS", value_name = "URL")]
    redis: Option<String>,

    /// Keep the event log in files under DIR (created if missing), so history survives restarts and crashes; exclusive with --redis
    #[arg(long, env = "SSEHUB_DATA", value_name = "DIR")]
    data: Option<PathBuf>,

    /// With --data: how a publish reaches the disk: always (flushed before it is answered), periodic (flushed every 100 ms) or never (left to the OS)
    #[arg(long, env = "SSEHUB_FSYNC", value_name = "POLICY", value_enum, hide_possible_values = true, default_value_t = Fsync::Always)]
    fsync: Fsync,

    /// Host names requests may be addressed to (the `Host` field), comma-separated, `*` for any; loopback names are always allowed [default: loopback names only when bound to loopback, else any]
    #[arg(long, env = "SSEHUB_ALLOWED_HOSTS", value_name = "HOSTS")]
    allowed_hosts: Option<String>,

    /// Allow binding a non-loopback address without --publish-token
    #[arg(long, env = "SSEHUB_ALLOW_ANONYMOUS_PUBLISH")]
    allow_anonymous_publish: bool,
}

/// When the file log (`--data`) flushes what it wrote to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Before a publish is answered; concurrent publishes share one flush.
    Always,
    /// Every 100 ms: a crash may lose the last 100 ms of answered events.
    Periodic,
    /// Never asked for: the operating system writes back when it likes.
    Never,
}

/// Everything the hub is started with, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub heartbeat: Duration,
    pub retry_ms: u64,
    pub history: usize,
    pub history_bytes: usize,
    pub max_subscribers: usize,
    pub client_queue: usize,
    pub max_event_bytes: usize,
    pub publish_token: Option<String>,
    pub subscribe_token: Option<String>,
    pub cors_origin: Option<String>,
    pub redis: Option<String>,
    /// `--data`: the directory of the file log.
    pub data: Option<PathBuf>,
    pub fsync: Fsync,
    /// The names a request's `Host` may give besides the loopback ones;
    /// `None` takes any.
    pub allowed_hosts: Option<Vec<String>>,
}

/// A startup refusal: printed to stderr, exit status 2.
#[derive(Debug)]
pub enum ConfigError {
    /// clap's own message (unknown flag, unparsable value, `--help`).
    Args(clap::Error),
    /// A value that parsed but cannot be used.
    Invalid {
        option: &'static str,
        value: String,
        why: &'static str,
    },
    /// A non-loopback bind with nobody guarding publishing.
    AnonymousPublish(SocketAddr),
    /// Two options that each choose the same thing (the event log).
    Exclusive(&'static str, &'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Args(e) => write!(f, "{e}"),
            ConfigError::Invalid { option, value, why } => {
                write!(f, "{option}: invalid value {value:?}: {why}")
            }
            ConfigError::AnonymousPublish(addr) => write!(
                f,
                "--bind: {addr} is not a loopback address and --publish-token is not set; \
                 set a token or pass --allow-anonymous-publish"
            ),
            ConfigError::Exclusive(a, b) => {
                write!(
                    f,
                    "{a} and {b} cannot be used together: each is the event log"
                )
            }
        }
    }
}

/// A header-safe value: visible ASCII, no spaces (tokens travel in a header).
fn check_token(option: &'static str, value: &Option<String>) -> Result<(), ConfigError> {
    match value {
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(ConfigError::Invalid {
                option,
                // never echo a token: it is a secret
                value: "<hidden>".into(),
                why: "expected 1 or more visible ASCII characters, no spaces",
            })
        }
        _ => Ok(()),
    }
}

/// `--allowed-hosts`: host names without ports, compared in lower case.
fn host_list(list: &str) -> Result<Vec<String>, ConfigError> {
    // As requests' names are compared: IPv6 literals in canonical form.
    let name = |n: &str| -> Option<String> {
        let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
        match n.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(|ip| format!("[{ip}]")),
            None => (!n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
            .then_some(n),
        }
    };
    list.split(',')
        .map(name)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| ConfigError::Invalid {
            option: "--allowed-hosts",
            value: list.escape_debug().to_string(),
            why: "expected host names such as hub.example.com,10.0.0.5 (no ports), or *",
        })
}

impl Config {
    /// Parses `args` (the first is the program name) and the `SSEHUB_*`
    /// environment variables; the flag wins over the variable.
    pub fn parse<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let a = Args::try_parse_from(args).map_err(ConfigError::Args)?;
        check_token("--publish-token", &a.publish_token)?;
        check_token("--subscribe-token", &a.subscribe_token)?;
        if let Some(origin) = &a.cors_origin {
            if origin.is_empty() || !origin.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    option: "--cors-origin",
                    value: origin.escape_debug().to_string(),
                    why: "expected an origin such as https://example.com, or *",
                });
            }
        }
        if let Some(url) = &a.redis {
            // TLS (rediss://) is not built in: refuse it here rather than
            // fail on the first connection.
            if !["redis://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError::Invalid {
                    option: "--redis",
                    // never echo the URL: it may carry a password
                    value: "<hidden>".into(),
                    why: "expected redis://HOST:PORT or redis+unix:///PATH",
                });
            }
        }
        if a.data.is_some() && a.redis.is_some() {
            return Err(ConfigError::Exclusive("--data", "--redis"));
        }
        if a.data.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::Invalid {
                option: "--data",
                value: String::new(),
                why: "expected a directory",
            });
        }
        if !a.bind.ip().is_loopback() && a.publish_token.is_none() && !a.allow_anonymous_publish {
            return Err(ConfigError::AnonymousPublish(a.bind));
        }
        let allowed_hosts = match a.allowed_hosts.as_deref().map(str::trim) {
            Some("*") => None,
            Some(list) => Some(host_list(list)?),
            // A hub on loopback is not meant to be reached under another
            // name: a page that rebinds its own name to 127.0.0.1 would
            // otherwise be same-origin with the hub and read its streams.
            None if a.bind.ip().is_loopback() => Some(Vec::new()),
            None => None,
        };
        Ok(Config {
            bind: a.bind,
            heartbeat: Duration::from_secs(a.heartbeat),
            retry_ms: a.retry_ms,
            history: a.history,
            history_bytes: a.history_bytes,
            max_subscribers: a.max_subscribers as usize,
            client_queue: a.client_queue as usize,
            max_event_bytes: a.max_event_bytes as usize,
            publish_token: a.publish_token,
            subscribe_token: a.subscribe_token,
            cors_origin: a.cors_origin,
            redis: a.redis,
            data: a.data,
            fsync: a.fsync,
            allowed_hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse(std::iter::once("ssehub").chain(args.iter().copied()))
    }

    fn refusal(args: &[&str]) -> String {
        parse(args).expect_err("refused").to_string()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.heartbeat, Duration::from_secs(30));
        assert_eq!(c.retry_ms, 3000);
        assert_eq!(c.history, 10_000);
        assert_eq!(c.history_bytes, 67_108_864);
        assert_eq!(c.max_subscribers, 10_000);
        assert_eq!(c.client_queue, 1024);
        assert_eq!(c.max_event_bytes, 65_536);
        assert!(c.publish_token.is_none() && c.subscribe_token.is_none());
        assert!(c.cors_origin.is_none() && c.redis.is_none());
        assert!(c.data.is_none());
        assert_eq!(c.fsync, Fsync::Always);
        assert_eq!(c.allowed_hosts, Some(vec![]));
    }

    #[test]
    fn allowed_hosts() {
        let public = ["--bind", "0.0.0.0:8080", "--publish-token", "t"];
        assert_eq!(parse(&public).unwrap().allowed_hosts, None);
        let c = parse(&["--allowed-hosts", "Hub.Example.com., 10.0.0.5"]).unwrap();
        assert_eq!(
            c.allowed_hosts,
            Some(vec!["hub.example.com".into(), "10.0.0.5".into()])
        );
        assert_eq!(
            parse(&["--allowed-hosts", "*"]).unwrap().allowed_hosts,
            None
        );
        assert!(refusal(&["--allowed-hosts", "a.example:80/x"]).contains("--allowed-hosts"));
        assert!(refusal(&["--allowed-hosts", "a,,b"]).contains("--allowed-hosts"));
        assert!(refusal(&["--allowed-hosts", "a.example:80"]).contains("--allowed-hosts"));
        let c = parse(&["--allowed-hosts", "[2001:DB8:0:0::1]"]).unwrap();
        assert_eq!(c.allowed_hosts, Some(vec!["[2001:db8::1]".into()]));
    }

    #[test]
    fn values_are_typed() {
        let c = parse(&[
            "--heartbeat",
            "2",
            "--history",
            "0",
            "--bind",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(2));
        assert_eq!(c.history, 0);
        assert_eq!(c.bind.port(), 0);
    }

    #[test]
    fn bad_values_name_the_option() {
        assert!(refusal(&["--heartbeat", "0"]).contains("--heartbeat"));
        assert!(refusal(&["--heartbeat", "x"]).contains("--heartbeat"));
        assert!(refusal(&["--history-bytes", "64k"]).contains("--history-bytes"));
        assert!(refusal(&["--client-queue", "0"]).contains("--client-queue"));
        assert!(refusal(&["--bind", "nowhere"]).contains("--bind"));
        assert!(refusal(&["--cors-origin", "a b"]).contains("--cors-origin"));
        assert!(refusal(&["--redis", "http://x"]).contains("--redis"));
        assert!(refusal(&["--redis", "rediss://h:1"]).contains("--redis"));
        assert!(parse(&["--redis", "redis://127.0.0.1:6379/2"]).is_ok());
    }

    #[test]
    fn data_and_fsync() {
        let c = parse(&["--data", "/var/lib/ssehub", "--fsync", "periodic"]).unwrap();
        assert_eq!(c.data, Some(PathBuf::from("/var/lib/ssehub")));
        assert_eq!(c.fsync, Fsync::Periodic);
        assert_eq!(parse(&["--fsync", "never"]).unwrap().fsync, Fsync::Never);
        assert!(refusal(&["--fsync", "sometimes"]).contains("--fsync"));
        assert!(refusal(&["--data", ""]).contains("--data"));
        let e = refusal(&["--data", "d", "--redis", "redis://127.0.0.1:6379"]);
        assert!(e.contains("--data") && e.contains("--redis"), "{e}");
    }

    #[test]
    fn tokens_are_checked_and_never_echoed() {
        let e = refusal(&["--publish-token", "s3cret value"]);
        assert!(e.contains("--publish-token") && !e.contains("s3cret"));
        assert!(refusal(&["--subscribe-token", ""]).contains("--subscribe-token"));
    }

    #[test]
    fn public_bind_needs_a_publish_token() {
        assert!(refusal(&["--bind", "0.0.0.0:8080"]).contains("--allow-anonymous-publish"));
        assert!(parse(&["--bind", "0.0.0.0:8080", "--publish-token", "t"]).is_ok());
        assert!(parse(&["--bind", "0.0.0.0:8080", "--allow-anonymous-publish"]).is_ok());
        assert!(parse(&["--bind", "[::1]:8080"]).is_ok());
    }
}
