//! Command-line options and `SSEHUB_*` variables → one typed `Config`, with
//! every default in one place. Every startup refusal is a `ConfigError`
//! naming the option; nothing else in the crate reads argv or the environment.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::access::{KeySet, Rules, SignedTokens};
use crate::event::{Selector, TopicFilter};

#[derive(Parser, Debug)]
#[command(
    name = "ssehub",
    version,
    about = "A Server-Sent Events hub: POST events, subscribe with EventSource, replay with Last-Event-ID.",
    after_help = "Every option also reads SSEHUB_<NAME>, its name in capitals with _ for - (e.g. SSEHUB_PUBLISH_TOKEN); the flag wins; an empty variable counts as unset; a switch takes true or false (1/0, yes/no, on/off). RUST_LOG sets the log level (default info)."
)]
struct Args {
    /// Listen address; port 0 picks a free port
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,

    /// Idle seconds after which a subscriber gets a `:` comment line
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    heartbeat: u64,

    /// Base reconnection delay sent as `retry:`; each stream adds up to 50% jitter
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    retry_ms: u64,

    /// Events kept for replay (all topics together); 0 disables replay
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    history: usize,

    /// Bytes of encoded events kept for replay; the oldest go first
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    history_bytes: usize,

    /// Open streams at once; one more is answered 503 (clamped to what the machine can hold)
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_subscribers: u64,

    /// Events queued for one subscriber; one further behind reads the log instead
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    client_queue: u64,

    /// Largest publish body in bytes; larger is 413
    #[arg(long, value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    max_event_bytes: u64,

    /// When set, publishing needs `Authorization: Bearer TOKEN`
    #[arg(long, value_name = "TOKEN")]
    publish_token: Option<String>,

    /// When set, subscribing needs `Authorization: Bearer TOKEN` or `?token=TOKEN`
    #[arg(long, value_name = "TOKEN")]
    subscribe_token: Option<String>,

    /// Access-Control-Allow-Origin for /events (`*` allowed); enables preflight OPTIONS
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Option<String>,

    /// Use Redis as the shared event log, so several hubs act as one (redis://[:PASSWORD@]HOST:PORT[/DB])
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// Keep the event log in files under DIR (created if missing), so history survives restarts and crashes; exclusive with --redis
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// With --data: how a publish reaches the disk: always (flushed before it is answered), periodic (flushed every 100 ms) or never (left to the OS)
    #[arg(long, value_name = "POLICY", value_enum, hide_possible_values = true, default_value_t = Fsync::Always)]
    fsync: Fsync,

    /// Host names requests may be addressed to (the `Host` field), comma-separated, `*` for any; loopback names are always allowed [default: loopback names only when bound to loopback, else any]
    #[arg(long, value_name = "HOSTS")]
    allowed_hosts: Option<String>,

    /// Allow binding a non-loopback address without --publish-token
    #[arg(long)]
    allow_anonymous_publish: bool,

    /// Verify signed tokens (JWT) with this HMAC key, 32 bytes or more: HS256, HS384, HS512
    #[arg(long, value_name = "SECRET")]
    jwt_secret: Option<String>,

    /// Verify signed tokens with this PEM public key: RSA (RS256..PS512), EC P-256 (ES256) or P-384 (ES384), Ed25519 (EdDSA)
    #[arg(long, value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,

    /// Verify signed tokens with the keys of this JSON Web Key Set, chosen by `kid`; re-read on SIGHUP
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,

    /// Signed tokens must carry this `aud`
    #[arg(long, value_name = "AUD")]
    jwt_audience: Option<String>,

    /// Signed tokens must carry this `iss`
    #[arg(long, value_name = "ISS")]
    jwt_issuer: Option<String>,

    /// Topics anyone may subscribe to without a token, comma-separated selectors (`news,public/*`)
    #[arg(long, value_name = "SELECTORS")]
    anonymous_topics: Option<String>,
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
    /// The keys and claims signed tokens are checked against, if any.
    pub signed: Option<SignedTokens>,
    /// What anyone may subscribe to without a token (empty: nothing).
    pub anonymous_topics: TopicFilter,
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
    /// A `SSEHUB_*` variable whose value its option refuses.
    Env { var: String, why: String },
    /// A non-loopback bind with nobody guarding publishing.
    AnonymousPublish(SocketAddr),
    /// A key option whose key cannot be used (unreadable file, not a key).
    Key {
        option: &'static str,
        /// The file, or `<hidden>` for a secret.
        value: String,
        why: String,
    },
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
            ConfigError::Env { var, why } => write!(f, "{var}: {why}"),
            ConfigError::AnonymousPublish(addr) => write!(
                f,
                "--bind: {addr} is not a loopback address and neither --publish-token nor \
                 --jwt-secret, --jwt-public-key or --jwks is set; set one or pass \
                 --allow-anonymous-publish"
            ),
            ConfigError::Key { option, value, why } => write!(f, "{option}: {value:?}: {why}"),
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

/// The variable an option reads: `--publish-token` ⇔ `SSEHUB_PUBLISH_TOKEN`.
fn variable(long: &str) -> String {
    format!("SSEHUB_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// clap's message for one refused value, without its `error: ` prefix and
/// usage lines.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Parses the command line, every option it does not give taken from its
/// variable in `env` (before the given flags, so that clap sees each option
/// once). clap's own `env` is not used: it reads the process environment,
/// which a test cannot hand in.
fn matches(
    args: Vec<OsString>,
    env: &HashMap<OsString, OsString>,
) -> Result<ArgMatches, ConfigError> {
    let cmd = Args::command();
    let given = cmd
        .clone()
        .try_get_matches_from(&args)
        .map_err(ConfigError::Args)?;
    let program = args.first().cloned().unwrap_or_else(|| "ssehub".into());
    let mut all = vec![program.clone()];
    for arg in cmd.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        let switch = match arg.get_action() {
            ArgAction::Set => false,
            ArgAction::SetTrue => true,
            _ => continue,
        };
        if given.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let var = variable(long);
        let Some(value) = env.get(OsStr::new(&var)).filter(|v| !v.is_empty()) else {
            continue;
        };
        let flag = if switch {
            match value.to_str().map(str::to_ascii_lowercase).as_deref() {
                Some("true" | "1" | "yes" | "on") => OsString::from(format!("--{long}")),
                Some("false" | "0" | "no" | "off") => continue,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        why: format!(
                            "invalid value {:?}: expected true or false",
                            value.to_string_lossy()
                        ),
                    })
                }
            }
        } else {
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(value);
            flag
        };
        // Alone, so that a refused value is blamed on its variable.
        if let Err(e) = cmd.clone().try_get_matches_from([&program, &flag]) {
            return Err(ConfigError::Env {
                var,
                why: first_line(&e),
            });
        }
        all.push(flag);
    }
    all.extend(args.into_iter().skip(1));
    cmd.try_get_matches_from(all).map_err(ConfigError::Args)
}

impl Config {
    /// What the access rules are made of.
    pub fn access_rules(&self) -> Rules {
        Rules {
            publish_token: self.publish_token.clone(),
            subscribe_token: self.subscribe_token.clone(),
            cors_origin: self.cors_origin.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            anonymous: self.anonymous_topics.clone(),
            signed: self.signed.clone(),
        }
    }
}

impl Config {
    /// Parses `args` (the first is the program name) and, from `env` (the
    /// process environment, as name and value), the `SSEHUB_*` variables;
    /// the flag wins over the variable.
    pub fn parse<A, E, K, V>(args: A, env: E) -> Result<Config, ConfigError>
    where
        A: IntoIterator,
        A::Item: Into<OsString>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let args = args.into_iter().map(Into::into).collect();
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let a = Args::from_arg_matches(&matches(args, &env)?).map_err(ConfigError::Args)?;
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
        let signed = signed_tokens(&a)?;
        let anonymous_topics = match &a.anonymous_topics {
            None => TopicFilter::default(),
            Some(_) if signed.is_none() && a.subscribe_token.is_none() => {
                return Err(ConfigError::Invalid {
                    option: "--anonymous-topics",
                    value: a.anonymous_topics.clone().unwrap_or_default(),
                    why: "without --subscribe-token or signed tokens every topic is open",
                })
            }
            Some(list) => selector_list(list)?,
        };
        if !a.bind.ip().is_loopback()
            && a.publish_token.is_none()
            && signed.is_none()
            && !a.allow_anonymous_publish
        {
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
            signed,
            anonymous_topics,
        })
    }
}

/// `--jwt-secret`, `--jwt-public-key` or `--jwks` (one of them), read and
/// checked now: a key that cannot verify anything is a startup refusal.
fn signed_tokens(a: &Args) -> Result<Option<SignedTokens>, ConfigError> {
    let given = [
        a.jwt_secret.is_some(),
        a.jwt_public_key.is_some(),
        a.jwks.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ConfigError::Invalid {
            option: "--jwt-secret",
            value: "<hidden>".into(),
            why: "--jwt-secret, --jwt-public-key and --jwks are exclusive: give one",
        });
    }
    let file = |option: &'static str, path: &PathBuf, load: fn(&[u8]) -> Result<KeySet, String>| {
        let unusable = |why: String| ConfigError::Key {
            option,
            value: path.display().to_string(),
            why,
        };
        let bytes = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
        load(&bytes).map_err(unusable)
    };
    let keys = match (&a.jwt_secret, &a.jwt_public_key, &a.jwks) {
        (Some(secret), _, _) => KeySet::secret(secret).map_err(|why| ConfigError::Key {
            option: "--jwt-secret",
            // never echo a secret
            value: "<hidden>".into(),
            why,
        })?,
        (_, Some(path), _) => file("--jwt-public-key", path, KeySet::pem)?,
        (_, _, Some(path)) => file("--jwks", path, KeySet::jwks)?,
        _ => {
            for (option, value) in [
                ("--jwt-audience", &a.jwt_audience),
                ("--jwt-issuer", &a.jwt_issuer),
            ] {
                if let Some(value) = value {
                    return Err(ConfigError::Invalid {
                        option,
                        value: value.escape_debug().to_string(),
                        why: "needs --jwt-secret, --jwt-public-key or --jwks",
                    });
                }
            }
            return Ok(None);
        }
    };
    Ok(Some(SignedTokens {
        keys,
        jwks: a.jwks.clone(),
        audience: a.jwt_audience.clone(),
        issuer: a.jwt_issuer.clone(),
    }))
}

/// `--anonymous-topics`: comma-separated selectors.
fn selector_list(list: &str) -> Result<TopicFilter, ConfigError> {
    list.split(',')
        .map(|s| Selector::parse(s.trim()).ok())
        .collect::<Option<Vec<Selector>>>()
        .map(TopicFilter::new)
        .ok_or_else(|| ConfigError::Invalid {
            option: "--anonymous-topics",
            value: list.escape_debug().to_string(),
            why: "expected topics or selectors such as news,public/*",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        parse_env(args, &[])
    }

    fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args = std::iter::once("ssehub").chain(args.iter().copied());
        Config::parse(args, env.iter().copied())
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

    #[test]
    fn variables_are_read_from_the_given_environment_and_flags_win() {
        let env = [
            ("SSEHUB_HISTORY", "5"),
            ("SSEHUB_HEARTBEAT", "7"),
            ("SSEHUB_PUBLISH_TOKEN", "from-env"),
            ("SSEHUB_ALLOW_ANONYMOUS_PUBLISH", "true"),
            ("SSEHUB_CORS_ORIGIN", ""),
            ("OTHER_HISTORY", "9"),
        ];
        let c = parse_env(&["--heartbeat", "2"], &env).unwrap();
        assert_eq!(c.history, 5);
        assert_eq!(c.heartbeat, Duration::from_secs(2), "the flag wins");
        assert_eq!(c.publish_token.as_deref(), Some("from-env"));
        assert_eq!(c.cors_origin, None, "an empty variable is unset");
        let c = parse_env(&["--history=3"], &env).unwrap();
        assert_eq!(c.history, 3);
        // The switch from the environment allows the public bind.
        let public = [
            ("SSEHUB_BIND", "0.0.0.0:1"),
            ("SSEHUB_ALLOW_ANONYMOUS_PUBLISH", "1"),
        ];
        assert!(parse_env(&[], &public).is_ok());
        let off = [
            ("SSEHUB_BIND", "0.0.0.0:1"),
            ("SSEHUB_ALLOW_ANONYMOUS_PUBLISH", "off"),
        ];
        let e = parse_env(&[], &off).unwrap_err().to_string();
        assert!(e.contains("--allow-anonymous-publish"), "{e}");
    }

    #[test]
    fn a_refused_variable_is_named() {
        let e = parse_env(&[], &[("SSEHUB_CLIENT_QUEUE", "lots")]).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("SSEHUB_CLIENT_QUEUE: "), "{e}");
        assert!(e.contains("--client-queue") && e.contains("lots"), "{e}");
        let e = parse_env(&[], &[("SSEHUB_ALLOW_ANONYMOUS_PUBLISH", "maybe")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SSEHUB_ALLOW_ANONYMOUS_PUBLISH: "),
            "{e}"
        );
        // A flag given on the command line is not read from the variable.
        assert!(parse_env(&["--client-queue", "8"], &[("SSEHUB_CLIENT_QUEUE", "lots")]).is_ok());
    }

    fn keys(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn signed_token_keys_are_read_at_startup() {
        assert!(parse(&[]).unwrap().signed.is_none());
        let secret = "0123456789abcdef0123456789abcdef";
        let c = parse(&["--jwt-secret", secret, "--jwt-audience", "hub"]).unwrap();
        let s = c.signed.unwrap();
        assert_eq!((s.keys.len(), s.audience.as_deref()), (1, Some("hub")));
        let e = refusal(&["--jwt-secret", "short secret"]);
        assert!(
            e.contains("--jwt-secret") && !e.contains("short secret"),
            "{e}"
        );
        for pem in [
            "rsa.pub.pem",
            "p256.pub.pem",
            "p384.pub.pem",
            "ed25519.pub.pem",
        ] {
            assert!(parse(&["--jwt-public-key", &keys(pem)]).is_ok(), "{pem}");
        }
        let e = refusal(&["--jwt-public-key", &keys("rsa.pem")]);
        assert!(
            e.starts_with("--jwt-public-key: ") && e.contains("private key"),
            "{e}"
        );
        let e = refusal(&["--jwt-public-key", "/nonexistent/key.pem"]);
        assert!(
            e.starts_with("--jwt-public-key: \"/nonexistent/key.pem\""),
            "{e}"
        );
        let e = refusal(&["--jwt-public-key", &keys("jwks-old.json")]);
        assert!(e.contains("--jwt-public-key"), "{e}");
        let c = parse(&["--jwks", &keys("jwks-old.json")]).unwrap();
        assert_eq!(c.signed.unwrap().jwks, Some(keys("jwks-old.json").into()));
        assert!(refusal(&["--jwks", &keys("rsa.pub.pem")]).starts_with("--jwks: "));
        let both = ["--jwt-secret", secret, "--jwks", &keys("jwks-old.json")];
        assert!(refusal(&both).contains("exclusive"));
        assert!(refusal(&["--jwt-audience", "hub"]).contains("--jwt-audience"));
        assert!(refusal(&["--jwt-issuer", "me"]).contains("--jwt-issuer"));
        // Signed tokens guard publishing on a public address.
        let public = ["--bind", "0.0.0.0:8080", "--jwt-secret", secret];
        assert!(parse(&public).is_ok());
    }

    #[test]
    fn anonymous_topics_are_selectors() {
        let secret = "0123456789abcdef0123456789abcdef";
        let c = parse(&[
            "--jwt-secret",
            secret,
            "--anonymous-topics",
            "news, public/*",
        ])
        .unwrap();
        assert!(c.anonymous_topics.matches("news") && c.anonymous_topics.matches("public/a"));
        assert!(!c.anonymous_topics.matches("private"));
        assert!(
            refusal(&["--jwt-secret", secret, "--anonymous-topics", "a,,b"])
                .contains("--anonymous-topics")
        );
        assert!(refusal(&["--anonymous-topics", "news"]).contains("--anonymous-topics"));
        assert!(parse(&["--subscribe-token", "t", "--anonymous-topics", "news"]).is_ok());
    }
}
