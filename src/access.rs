//! Who may do what: the Host a request is addressed to (against DNS
//! rebinding), the Origin a browser publishes from, the CORS fields, and the
//! shared and signed tokens a request carries → the topics it may publish to
//! and read (`Grants`), or a refusal with its RFC 6750 challenge (`Denied`).
//! Reads request heads and key files; never writes to a socket, and never
//! puts a token in a log line or a reason.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

use crate::event::{Selector, TopicFilter};
use crate::request::Head;

/// The cookie that may carry a signed token (SPEC "Signed tokens").
pub const COOKIE: &str = "ssehub_authorization";
/// SPEC: `nbf` allows this much clock skew, `exp` none.
const NBF_SKEW_SECS: u64 = 5;
/// RFC 7518 §3.2: an HMAC key at least as long as the hash (HS256).
pub const MIN_SECRET_BYTES: usize = 32;
/// RFC 7518 §3.3: RSA keys of 2048 bits or more.
const MIN_RSA_BYTES: usize = 256;

/// What a request may do: the topics it may publish to and read.
#[derive(Clone, Debug, PartialEq)]
pub struct Grants {
    pub publish: TopicFilter,
    pub subscribe: TopicFilter,
    /// The signed token's `sub`, for log lines.
    pub sub: Option<String>,
    /// The signed token's `exp` in Unix seconds: a stream ends then.
    pub exp: Option<u64>,
    /// Set when the request carried no token: what it asks beyond the
    /// anonymous topics then needs one (401) rather than a wider one (403).
    missing: Option<&'static str>,
}

impl Grants {
    /// Every topic, for a hub without tokens and for the shared tokens.
    fn everything() -> Grants {
        Grants {
            publish: TopicFilter::all(),
            subscribe: TopicFilter::all(),
            sub: None,
            exp: None,
            missing: None,
        }
    }

    /// Publishing to `topic` needs a publish selector that matches it.
    pub fn publish_to(&self, topic: &str) -> Result<(), Denied> {
        if self.publish.matches(topic) {
            Ok(())
        } else {
            Err(Denied::scope(topic))
        }
    }

    /// What a subscriber that asked for `requested` (its `topic=`, each a
    /// selector) receives: exactly what it asked, when its grants cover
    /// each, else a refusal naming the first that is not; with no `topic=`
    /// every topic it may read.
    pub fn subscription(&self, requested: &[Selector]) -> Result<TopicFilter, Denied> {
        let refuse = |topic: &str| match self.missing {
            Some(reason) => Denied::missing(reason),
            None => Denied::scope(topic),
        };
        if requested.is_empty() {
            return match self.subscribe.is_empty() {
                true if self.missing.is_some() => Err(refuse("")),
                true => Err(Denied {
                    status: 403,
                    reason: "no topic granted".into(),
                    challenge: Some(challenge("insufficient_scope", "no topic granted")),
                }),
                false => Ok(self.subscribe.clone()),
            };
        }
        match requested.iter().find(|s| !self.subscribe.covers(s)) {
            Some(s) => Err(refuse(&s.to_string())),
            None => Ok(TopicFilter::new(requested.iter().cloned())),
        }
    }
}

/// A refused request: its status, the reason told to the client and
/// logged, and the `WWW-Authenticate` value of a 401 or 403.
#[derive(Debug, PartialEq)]
pub struct Denied {
    pub status: u16,
    pub reason: String,
    pub challenge: Option<String>,
}

impl Denied {
    fn new(status: u16, reason: &str) -> Denied {
        Denied {
            status,
            reason: reason.into(),
            challenge: None,
        }
    }

    /// RFC 6750 §3.1: a request without a token gets a challenge without
    /// an error code.
    fn missing(reason: &str) -> Denied {
        Denied {
            status: 401,
            reason: reason.into(),
            challenge: Some("Bearer".into()),
        }
    }

    fn invalid(why: Invalid) -> Denied {
        Denied {
            status: 401,
            reason: why.to_string(),
            challenge: Some(challenge("invalid_token", &why.to_string())),
        }
    }

    fn scope(topic: &str) -> Denied {
        let reason = format!("topic not granted: {topic}");
        Denied {
            status: 403,
            challenge: Some(challenge("insufficient_scope", &reason)),
            reason,
        }
    }
}

/// `Bearer error="…", error_description="…"`. RFC 6750 §3 allows only
/// printable ASCII but `"` and `\` in the description; anything else (a
/// topic may hold any character) is percent-encoded.
fn challenge(error: &str, description: &str) -> String {
    let mut d = String::with_capacity(description.len());
    for b in description.bytes() {
        match b {
            b'%' | b'"' | b'\\' => d.push_str(&format!("%{b:02X}")),
            0x20..=0x7e => d.push(b as char),
            _ => d.push_str(&format!("%{b:02X}")),
        }
    }
    format!("Bearer error=\"{error}\", error_description=\"{d}\"")
}

/// Why a signed token was refused (401 `invalid_token`); the `Display`
/// is the reason the client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not three base64url segments of JSON, or a claim of the wrong type.
    Malformed,
    /// The token's `kid` names no key of the set, or it names none and the
    /// set holds several.
    UnknownKey,
    /// `alg` is not one the key is for (`none` included).
    Algorithm,
    BadSignature,
    NoExp,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    /// The `ssehub` claim is not `{"publish": [SELECTOR…], "subscribe": […]}`.
    BadGrants,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::Malformed => "malformed token",
            Invalid::UnknownKey => "unknown key id",
            Invalid::Algorithm => "algorithm not allowed",
            Invalid::BadSignature => "bad signature",
            Invalid::NoExp => "token has no exp",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not yet valid",
            Invalid::WrongAudience => "wrong audience",
            Invalid::WrongIssuer => "wrong issuer",
            Invalid::BadGrants => "malformed ssehub claim",
        })
    }
}

/// One verification key and the only algorithms it verifies: the
/// algorithm comes from the key, never from the token.
#[derive(Clone, Debug)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

/// The keys signed tokens are verified with: one from `--jwt-secret` or
/// `--jwt-public-key`, or those of a `--jwks` file.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// Keys of a JWKS that were left out, and why (logged at startup).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// An HMAC secret: HS256, HS384, HS512.
    pub fn secret(secret: &str) -> Result<KeySet, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "expected at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)"
            ));
        }
        let decoding = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
        Ok(KeySet::one(Key {
            kid: None,
            algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            decoding,
        }))
    }

    /// A PEM public key: RSA (RS*, PS*), EC P-256 (ES256) or P-384
    /// (ES384), Ed25519 (EdDSA).
    pub fn pem(pem: &[u8]) -> Result<KeySet, String> {
        let label = std::str::from_utf8(pem)
            .ok()
            .and_then(|t| t.split("-----BEGIN ").nth(1))
            .and_then(|t| t.split_once("-----"))
            .map(|(label, _)| label);
        match label {
            Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
            Some(l) if l.contains("PRIVATE") => {
                return Err(
                    "a private key: give the hub the public key (openssl pkey -pubout)".into(),
                )
            }
            _ => return Err("expected a PEM public key (-----BEGIN PUBLIC KEY-----)".into()),
        }
        let decoding = DecodingKey::from_ec_pem(pem)
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .or_else(|_| DecodingKey::from_rsa_pem(pem))
            .map_err(|_| "not an RSA, EC or Ed25519 public key".to_string())?;
        let key = Key::new(None, None, decoding)?;
        Ok(KeySet::one(key))
    }

    /// A JSON Web Key Set (RFC 7517). Keys for encryption, of a type or
    /// curve not supported, or unusable are left out (`skipped`); a set
    /// with no usable key, or two keys under one `kid`, is refused.
    pub fn jwks(json: &[u8]) -> Result<KeySet, String> {
        let set: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let list = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("expected {\"keys\": [...]}")?;
        let mut keys: Vec<Key> = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
            let name = kid
                .as_deref()
                .map_or_else(|| format!("key {i}"), |k| format!("key {:?}", k));
            match Key::from_jwk(kid, jwk) {
                Ok(key) => {
                    if keys.iter().any(|k| k.kid == key.kid) {
                        return Err(format!("{name} is given twice"));
                    }
                    keys.push(key);
                }
                Err(why) => skipped.push(format!("{name}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(match skipped.is_empty() {
                true => "no keys".into(),
                false => format!("no usable key ({})", skipped.join("; ")),
            });
        }
        Ok(KeySet { keys, skipped })
    }

    fn one(key: Key) -> KeySet {
        KeySet {
            keys: vec![key],
            skipped: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The `kid`s, for log lines.
    pub fn ids(&self) -> String {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                k.kid
                    .as_deref()
                    .map_or("(no kid)".into(), crate::request::shown)
            })
            .collect();
        ids.join(", ")
    }

    /// The key a token's `kid` names; without one, the only key.
    fn find(&self, kid: Option<&str>) -> Result<&Key, Invalid> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(Invalid::UnknownKey)
    }
}

impl Key {
    /// Checks that `decoding` is usable, and gives it the algorithms of its
    /// kind, or only `alg` when the key names one.
    fn new(kid: Option<String>, alg: Option<&str>, decoding: DecodingKey) -> Result<Key, String> {
        let family = decoding.family();
        let usable = |alg: Algorithm| {
            jsonwebtoken::crypto::CryptoProvider::try_get_default()
                .is_some_and(|p| (p.verifier_factory)(&alg, &decoding).is_ok())
        };
        let algorithms: Vec<Algorithm> = match family {
            AlgorithmFamily::Hmac => {
                let len = decoding.try_get_as_bytes().map_or(0, <[u8]>::len);
                if len < MIN_SECRET_BYTES {
                    return Err(format!("HMAC key shorter than {MIN_SECRET_BYTES} bytes"));
                }
                family.algorithms().to_vec()
            }
            AlgorithmFamily::Rsa => {
                let bytes = rsa_size(&decoding).ok_or("not a valid RSA public key")?;
                if bytes < MIN_RSA_BYTES {
                    return Err(format!("RSA key of {} bits, less than 2048", bytes * 8));
                }
                family.algorithms().to_vec()
            }
            // Each curve has one algorithm: a P-256 key verifies ES256 only.
            AlgorithmFamily::Ec | AlgorithmFamily::Ed => family
                .algorithms()
                .iter()
                .copied()
                .filter(|a| usable(*a))
                .collect(),
        };
        if algorithms.is_empty() {
            return Err("not a valid P-256, P-384 or Ed25519 public key".into());
        }
        let algorithms = match alg {
            None => algorithms,
            Some(name) => match Algorithm::from_str(name) {
                Ok(a) if algorithms.contains(&a) => vec![a],
                _ => return Err(format!("alg {name:?} does not fit this key")),
            },
        };
        Ok(Key {
            kid,
            algorithms,
            decoding,
        })
    }

    fn from_jwk(kid: Option<String>, jwk: &Value) -> Result<Key, String> {
        match jwk.get("use").and_then(Value::as_str) {
            None | Some("sig") => {}
            Some(other) => return Err(format!("for {other:?}, not for signatures")),
        }
        let parsed: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(jwk.clone()).map_err(|e| format!("malformed: {e}"))?;
        if let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) = &parsed.algorithm {
            use jsonwebtoken::jwk::EllipticCurve;
            if !matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) {
                return Err("unsupported curve (P-256 and P-384 are)".into());
            }
        }
        let decoding = DecodingKey::from_jwk(&parsed).map_err(|e| format!("unusable: {e}"))?;
        Key::new(kid, jwk.get("alg").and_then(Value::as_str), decoding)
    }
}

/// The size in bytes of an RSA public key's modulus, if it is one.
fn rsa_size(key: &DecodingKey) -> Option<usize> {
    use jsonwebtoken::DecodingKeyKind;
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let key = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => rsa::PublicKey::from_pkcs1_der(der).ok()?,
        DecodingKeyKind::RsaModulusExponent { n, e } => rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(n),
            rsa::BoxedUint::from_be_slice_vartime(e),
        )
        .ok()?,
    };
    Some(key.size())
}

/// How signed tokens are checked (config.rs builds it from the options).
#[derive(Clone, Debug)]
pub struct SignedTokens {
    pub keys: KeySet,
    /// The `--jwks` file, re-read on SIGHUP.
    pub jwks: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// What a valid signed token says.
#[derive(Debug, PartialEq)]
pub struct Claims {
    pub publish: TopicFilter,
    pub subscribe: TopicFilter,
    pub sub: Option<String>,
    pub exp: u64,
}

impl SignedTokens {
    /// Verifies `token` with `keys` at `now` (Unix seconds).
    fn verify(&self, keys: &KeySet, token: &str, now: u64) -> Result<Claims, Invalid> {
        let mut segments = token.split('.');
        let header = segments.next().unwrap_or("");
        if segments.count() != 2 {
            return Err(Invalid::Malformed);
        }
        let header: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Invalid::Malformed)?;
        // RFC 7515 §4.1.11: a critical extension this hub does not know.
        if header.get("crit").is_some() {
            return Err(Invalid::Malformed);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(Invalid::Malformed)?;
        let alg = Algorithm::from_str(alg).map_err(|_| Invalid::Algorithm)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(Invalid::Malformed),
        };
        let key = keys.find(kid)?;
        if !key.algorithms.contains(&alg) {
            return Err(Invalid::Algorithm);
        }

        let mut v = Validation::new(alg);
        // exp and nbf are checked below: the crate has one leeway for both.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        v.required_spec_claims = HashSet::new();
        v.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        use jsonwebtoken::errors::ErrorKind as E;
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &v)
            .map_err(|e| match e.kind() {
                E::InvalidSignature => Invalid::BadSignature,
                E::InvalidAlgorithm => Invalid::Algorithm,
                E::InvalidAudience => Invalid::WrongAudience,
                E::InvalidIssuer => Invalid::WrongIssuer,
                E::MissingRequiredClaim(c) | E::InvalidClaimFormat(c) if c == "aud" => {
                    Invalid::WrongAudience
                }
                E::MissingRequiredClaim(c) | E::InvalidClaimFormat(c) if c == "iss" => {
                    Invalid::WrongIssuer
                }
                _ => Invalid::Malformed,
            })?
            .claims;
        claims_at(&claims, now)
    }
}

/// The time and grant claims of a token whose signature holds.
fn claims_at(claims: &Value, now: u64) -> Result<Claims, Invalid> {
    // RFC 7519 §2 NumericDate: seconds, possibly fractional; rounded
    // towards refusing.
    let date = |name: &str, round: fn(f64) -> f64| -> Result<Option<u64>, Invalid> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| round(f) as u64)
                })
                .map(Some)
                .ok_or(Invalid::Malformed),
        }
    };
    let exp = date("exp", f64::floor)?.ok_or(Invalid::NoExp)?;
    // RFC 7519 §4.1.4: not accepted on or after exp.
    if now >= exp {
        return Err(Invalid::Expired);
    }
    if date("nbf", f64::ceil)?.is_some_and(|nbf| nbf > now + NBF_SKEW_SECS) {
        return Err(Invalid::NotYetValid);
    }
    let sub = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Invalid::Malformed),
    };
    let grants = match claims.get("ssehub") {
        None => None,
        Some(Value::Object(g)) => Some(g),
        Some(_) => return Err(Invalid::BadGrants),
    };
    let selectors = |name: &str| -> Result<TopicFilter, Invalid> {
        let Some(list) = grants.and_then(|g| g.get(name)) else {
            return Ok(TopicFilter::default());
        };
        let list = list.as_array().ok_or(Invalid::BadGrants)?;
        list.iter()
            .map(|s| {
                s.as_str()
                    .and_then(|s| Selector::parse(s).ok())
                    .ok_or(Invalid::BadGrants)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TopicFilter::new)
    };
    Ok(Claims {
        publish: selectors("publish")?,
        subscribe: selectors("subscribe")?,
        sub,
        exp,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `Access` is made from (`Config::access_rules`).
pub struct Rules {
    pub publish_token: Option<String>,
    pub subscribe_token: Option<String>,
    pub cors_origin: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub anonymous: TopicFilter,
    pub signed: Option<SignedTokens>,
}

/// The access rules of one hub.
pub struct Access {
    publish_token: Option<String>,
    subscribe_token: Option<String>,
    cors_origin: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    anonymous: TopicFilter,
    signed: Option<SignedTokens>,
    /// The keys in use; SIGHUP swaps in a new set (`reload`).
    keys: RwLock<Arc<KeySet>>,
}

impl Access {
    pub fn new(rules: Rules) -> Access {
        let keys = rules
            .signed
            .as_ref()
            .map_or_else(KeySet::default, |s| s.keys.clone());
        Access {
            publish_token: rules.publish_token,
            subscribe_token: rules.subscribe_token,
            cors_origin: rules.cors_origin,
            allowed_hosts: rules.allowed_hosts,
            anonymous: rules.anonymous,
            signed: rules.signed,
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// The `--jwks` file, if the keys come from one.
    pub fn jwks(&self) -> Option<&Path> {
        self.signed.as_ref()?.jwks.as_deref()
    }

    /// Re-reads the `--jwks` file. The new keys apply to requests from now
    /// on; open streams keep going. A file that cannot be read or holds no
    /// usable key leaves the keys as they were. Returns what to log.
    pub fn reload(&self) -> Result<String, String> {
        let path = self.jwks().ok_or("no --jwks file")?;
        let keys = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|json| KeySet::jwks(&json))
            .map_err(|why| {
                let old = self.keys.read().expect("keys lock").len();
                format!(
                    "--jwks: {}: {why}; keeping the {old} keys in use",
                    path.display()
                )
            })?;
        let mut done = format!(
            "--jwks: {}: {} keys ({})",
            path.display(),
            keys.len(),
            keys.ids()
        );
        for skipped in &keys.skipped {
            done.push_str(&format!("; left out {skipped}"));
        }
        *self.keys.write().expect("keys lock") = Arc::new(keys);
        Ok(done)
    }

    /// Refuses a malformed host (400) and one this hub does not answer for
    /// (403). Loopback names always pass; so does a request that names none
    /// (HTTP/1.0 without `Host`, not a browser). Against DNS rebinding: a
    /// page whose name an attacker points at 127.0.0.1 is same-origin with a
    /// hub on loopback, but its requests still carry the attacker's name in
    /// `Host`.
    pub fn check_host(&self, head: &Head) -> Result<(), Denied> {
        let host = request_host(head).map_err(|()| Denied::new(400, "malformed Host field"))?;
        match (&self.allowed_hosts, host) {
            (Some(allowed), Some(name)) if !is_loopback_name(&name) && !allowed.contains(&name) => {
                Err(Denied::new(
                    403,
                    "this hub is not served under that Host name (see --allowed-hosts)",
                ))
            }
            _ => Ok(()),
        }
    }

    /// What a `POST` may publish: from a browser only from an allowed
    /// origin, then with the publish token (every topic) or a signed token
    /// (its publish selectors) when either is configured.
    pub fn publisher(&self, head: &Head) -> Result<Grants, Denied> {
        let cross_origin = || Denied::new(403, "cross-origin publish refused (see --cors-origin)");
        let origin_allowed = origin_may_publish(head, self.cors_origin.as_deref());
        let shared = self.publish_token.as_deref();
        if shared.is_none() && self.signed.is_none() {
            return if origin_allowed {
                Ok(Grants::everything())
            } else {
                Err(cross_origin())
            };
        }
        // A page of another origin may publish with a valid token.
        self.token_publisher(head, shared)
            .map_err(|e| if origin_allowed { e } else { cross_origin() })
    }

    /// Whether a request may list and end subscriptions (SPEC
    /// "Subscriptions"): as a publisher with the publish token, or with a
    /// signed token whose publish selectors hold `*`. A hub without tokens
    /// has no one to tell apart, and the listing names every subscriber's
    /// address: only a client on `loopback` may.
    pub fn observer(&self, head: &Head, loopback: bool) -> Result<(), Denied> {
        let grants = self.publisher(head)?;
        if self.publish_token.is_none() && self.signed.is_none() && !loopback {
            return Err(Denied::new(
                403,
                "subscriptions are listed only to loopback clients when no token is configured",
            ));
        }
        if !grants.publish.covers(&Selector::All) {
            let reason = "subscriptions need the publish grant *";
            return Err(Denied {
                status: 403,
                challenge: Some(challenge("insufficient_scope", reason)),
                reason: reason.into(),
            });
        }
        Ok(())
    }

    fn token_publisher(&self, head: &Head, shared: Option<&str>) -> Result<Grants, Denied> {
        let wrong = "missing or wrong publish token";
        let token = match bearer(head) {
            Ok(Some(token)) => Some(token),
            Ok(None) => cookie(head),
            Err(()) if self.signed.is_none() => return Err(Denied::missing(wrong)),
            Err(()) => return Err(Denied::invalid(Invalid::Malformed)),
        };
        match token.filter(|t| !t.is_empty()) {
            Some(token) => self.grants(token, shared, wrong),
            None => Err(Denied::missing(self.missing(wrong))),
        }
    }

    /// What a `GET /events` may read, from the subscribe token (every
    /// topic), a signed token (its subscribe selectors) and the anonymous
    /// topics. The token is taken from the first carrier that has one:
    /// `Authorization: Bearer`, `authorization=` or `token=` in `query`,
    /// the cookie.
    pub fn subscriber(&self, head: &Head, query: &[(String, String)]) -> Result<Grants, Denied> {
        let shared = self.subscribe_token.as_deref();
        if shared.is_none() && self.signed.is_none() {
            return Ok(Grants::everything());
        }
        let wrong = "missing or wrong subscribe token";
        let in_query = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let token = match bearer(head) {
            Ok(Some(token)) => Some(token),
            Ok(None) => in_query("authorization")
                .or_else(|| in_query("token"))
                .or_else(|| cookie(head)),
            Err(()) if self.signed.is_none() => return Err(Denied::missing(wrong)),
            Err(()) => return Err(Denied::invalid(Invalid::Malformed)),
        };
        let missing = self.missing(wrong);
        let mut grants = match token.filter(|t| !t.is_empty()) {
            Some(token) => self.grants(token, shared, wrong)?,
            None if self.anonymous.is_empty() => return Err(Denied::missing(missing)),
            None => Grants {
                publish: TopicFilter::default(),
                subscribe: TopicFilter::default(),
                sub: None,
                exp: None,
                missing: Some(missing),
            },
        };
        grants.subscribe = grants.subscribe.union(&self.anonymous);
        Ok(grants)
    }

    /// The grants of a token: every topic for the shared one, else what a
    /// signed token says.
    fn grants(
        &self,
        token: &str,
        shared: Option<&str>,
        wrong: &'static str,
    ) -> Result<Grants, Denied> {
        if shared.is_some_and(|s| same_secret(token.as_bytes(), s.as_bytes())) {
            return Ok(Grants::everything());
        }
        let Some(signed) = &self.signed else {
            return Err(Denied::missing(wrong));
        };
        let keys = self.keys.read().expect("keys lock").clone();
        let claims = signed
            .verify(&keys, token, unix_now())
            .map_err(Denied::invalid)?;
        Ok(Grants {
            publish: claims.publish,
            subscribe: claims.subscribe,
            sub: claims.sub,
            exp: Some(claims.exp),
            missing: None,
        })
    }

    /// The reason given to a request without a token that needs one.
    fn missing(&self, wrong: &'static str) -> &'static str {
        match self.signed {
            Some(_) => "missing token",
            None => wrong,
        }
    }
}

/// The token of `Authorization: Bearer <token>`: the Bearer scheme and no
/// other (the scheme name is case-insensitive, RFC 9110 §11.1; one or more
/// spaces follow it, RFC 6750 §2.1). None when there is no such field or it
/// has another scheme; Err when it is given twice or has no token.
fn bearer(head: &Head) -> Result<Option<&str>, ()> {
    let value = match head.single("Authorization") {
        Ok(Some(value)) => value,
        Ok(None) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Ok(None);
    }
    match token.trim_start_matches(' ') {
        "" => Err(()),
        token => Ok(Some(token)),
    }
}

/// The `ssehub_authorization` cookie (RFC 6265 §4.2.1), quotes removed.
fn cookie(head: &Head) -> Option<&str> {
    head.values("Cookie")
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| {
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// Compares a secret without an early exit on the first differing byte.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (i, s) in secret.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(!s) ^ s);
    }
    diff == 0
}

/// The CORS fields of every `/events` answer, streams included: the allowed
/// origin, and `Vary: Origin` unless it is `*` (the answer then differs by
/// origin for caches).
pub fn cors_fields(origin: Option<&str>) -> impl Iterator<Item = (&'static str, &str)> {
    let vary = origin.filter(|o| *o != "*").map(|_| ("Vary", "Origin"));
    origin
        .map(|o| ("Access-Control-Allow-Origin", o))
        .into_iter()
        .chain(vary)
}

/// A browser sends `Origin` with every POST, and any page may POST to any
/// address without a preflight (a "simple" request), so a hub on loopback
/// without a token could be published to by every site its user visits.
/// Publishing from a browser without a token is therefore allowed from the
/// hub's own origin and from the origin `--cors-origin` names (`*` names
/// none: it opens reading to every page, not publishing). Clients that are
/// not browsers send no `Origin`.
fn origin_may_publish(head: &Head, cors_origin: Option<&str>) -> bool {
    let Ok(Some(origin)) = head.single("Origin") else {
        return head.single("Origin").is_ok();
    };
    if cors_origin == Some(origin) && origin != "*" {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((authority, head.single("Host")), (Some(a), Ok(Some(host))) if a.eq_ignore_ascii_case(host))
}

/// The host a request is addressed to (RFC 9112 §3.2.2): the authority of
/// an absolute-form target, else `Host`; by name (`host_name`). Err when
/// it is malformed.
fn request_host(head: &Head) -> Result<Option<String>, ()> {
    if let Some((authority, _)) = absolute_form(&head.target) {
        return host_name(authority).map(Some);
    }
    match head.single("Host") {
        Ok(Some(host)) => host_name(host).map(Some),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// `http://AUTHORITY/rest` or `https://…`, the scheme in any case.
pub fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(rest.split_at(end))
}

/// The name in a `Host` value (`uri-host [":" port]`, RFC 9110 §7.2):
/// without the port and a trailing dot, in lower case; an IPv6 literal in
/// its brackets, in canonical form. Err for anything else (userinfo, a
/// second colon, a path).
fn host_name(host: &str) -> Result<String, ()> {
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => {
            let (ip, port) = v6.split_once(']').ok_or(())?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| ())?;
            (format!("[{ip}]"), port)
        }
        None => {
            let (name, port) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
            if !name.bytes().all(reg_name) {
                return Err(());
            }
            (name.trim_end_matches('.').to_ascii_lowercase(), port)
        }
    };
    match port.strip_prefix(':') {
        None if port.is_empty() => Ok(name),
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(name),
        _ => Err(()),
    }
}

fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let ip = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(|ip| {
            ip.to_ipv4_mapped()
                .map_or(ip.is_loopback(), |v4| v4.is_loopback())
        }),
        None => name
            .parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback()),
    };
    ip.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "an HMAC secret of at least 32 bytes, for tests";
    const NOW: u64 = 1_764_000_000;

    fn key(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn signed(keys: KeySet) -> SignedTokens {
        SignedTokens {
            keys,
            jwks: None,
            audience: None,
            issuer: None,
        }
    }

    fn claims() -> Value {
        json!({
            "sub": "user-1",
            "exp": NOW + 60,
            "ssehub": {"publish": ["users/1/*"], "subscribe": ["users/1/*", "news"]},
        })
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).expect("sign")
    }

    fn verify(s: &SignedTokens, token: &str) -> Result<Claims, Invalid> {
        s.verify(&s.keys, token, NOW)
    }

    /// A token with its claims replaced, the signature kept.
    fn tampered(token: &str, claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = token.split('.').collect();
        let payload = b64.encode(claims.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    }

    fn unsigned(header: &Value, claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        )
    }

    #[test]
    fn every_algorithm_verifies_and_a_forgery_does_not() {
        let rsa = EncodingKey::from_rsa_pem(&key("rsa.pem")).unwrap();
        let families = [
            (
                KeySet::secret(SECRET).unwrap(),
                EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
            (
                KeySet::pem(&key("rsa.pub.pem")).unwrap(),
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
                KeySet::pem(&key("p256.pub.pem")).unwrap(),
                EncodingKey::from_ec_pem(&key("p256.pem")).unwrap(),
                vec![Algorithm::ES256],
            ),
            (
                KeySet::pem(&key("p384.pub.pem")).unwrap(),
                EncodingKey::from_ec_pem(&key("p384.pem")).unwrap(),
                vec![Algorithm::ES384],
            ),
            (
                KeySet::pem(&key("ed25519.pub.pem")).unwrap(),
                EncodingKey::from_ed_pem(&key("ed25519.pem")).unwrap(),
                vec![Algorithm::EdDSA],
            ),
        ];
        let wider = json!({"exp": NOW + 60, "ssehub": {"subscribe": ["*"]}});
        for (keys, signing, algorithms) in families {
            let s = signed(keys);
            for alg in algorithms {
                let token = sign(alg, &signing, &claims());
                let c = verify(&s, &token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
                assert_eq!(c.sub.as_deref(), Some("user-1"));
                assert_eq!(c.exp, NOW + 60);
                assert!(c.subscribe.matches("users/1/x") && !c.subscribe.matches("users/2/x"));
                assert!(c.publish.matches("users/1/x") && !c.publish.matches("news"));
                assert_eq!(
                    verify(&s, &tampered(&token, &wider)),
                    Err(Invalid::BadSignature),
                    "{alg:?}"
                );
            }
        }
        let other = EncodingKey::from_secret(b"another secret of at least 32 bytes!").unwrap();
        let s = signed(KeySet::secret(SECRET).unwrap());
        assert_eq!(
            verify(&s, &sign(Algorithm::HS256, &other, &claims())),
            Err(Invalid::BadSignature)
        );
    }

    #[test]
    fn the_algorithm_is_the_keys() {
        let none = unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims());
        let rsa = signed(KeySet::pem(&key("rsa.pub.pem")).unwrap());
        let hmac = signed(KeySet::secret(SECRET).unwrap());
        assert_eq!(verify(&rsa, &none), Err(Invalid::Algorithm));
        assert_eq!(verify(&hmac, &none), Err(Invalid::Algorithm));
        for alg in ["None", "NONE", "HS1", ""] {
            let t = unsigned(&json!({ "alg": alg }), &claims());
            assert_eq!(verify(&hmac, &t), Err(Invalid::Algorithm), "{alg}");
        }
        // The RSA public key, which anyone may have, used as an HMAC secret.
        let public = EncodingKey::from_secret(&key("rsa.pub.pem")).unwrap();
        let confused = sign(Algorithm::HS256, &public, &claims());
        assert_eq!(verify(&rsa, &confused), Err(Invalid::Algorithm));
        // A P-256 key verifies ES256 only; HMAC keys no RSA.
        let p256 = signed(KeySet::pem(&key("p256.pub.pem")).unwrap());
        let p384 = EncodingKey::from_ec_pem(&key("p384.pem")).unwrap();
        assert_eq!(
            verify(&p256, &sign(Algorithm::ES384, &p384, &claims())),
            Err(Invalid::Algorithm)
        );
        let rs = EncodingKey::from_rsa_pem(&key("rsa.pem")).unwrap();
        assert_eq!(
            verify(&hmac, &sign(Algorithm::RS256, &rs, &claims())),
            Err(Invalid::Algorithm)
        );
    }

    #[test]
    fn times_are_checked() {
        let s = signed(KeySet::secret(SECRET).unwrap());
        let k = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let at = |claims: Value| verify(&s, &sign(Algorithm::HS256, &k, &claims));
        assert_eq!(at(json!({"exp": NOW})), Err(Invalid::Expired));
        assert_eq!(at(json!({"exp": NOW - 1})), Err(Invalid::Expired));
        assert!(at(json!({"exp": NOW + 1})).is_ok());
        assert_eq!(at(json!({"sub": "x"})), Err(Invalid::NoExp));
        assert_eq!(at(json!({"exp": "tomorrow"})), Err(Invalid::Malformed));
        assert!(at(json!({"exp": (NOW + 1) as f64 + 0.5})).is_ok());
        assert_eq!(at(json!({"exp": NOW as f64 + 0.5})), Err(Invalid::Expired));
        assert!(at(json!({"exp": NOW + 60, "nbf": NOW + 5})).is_ok());
        assert_eq!(
            at(json!({"exp": NOW + 60, "nbf": NOW + 6})),
            Err(Invalid::NotYetValid)
        );
        assert_eq!(
            at(json!({"exp": NOW + 60, "nbf": -1})),
            Err(Invalid::Malformed)
        );
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let s = SignedTokens {
            audience: Some("hub".into()),
            issuer: Some("https://app.example".into()),
            ..signed(KeySet::secret(SECRET).unwrap())
        };
        let k = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let at = |claims: Value| verify(&s, &sign(Algorithm::HS256, &k, &claims));
        let exp = NOW + 60;
        let iss = "https://app.example";
        assert!(at(json!({"exp": exp, "aud": "hub", "iss": iss})).is_ok());
        assert!(at(json!({"exp": exp, "aud": ["other", "hub"], "iss": iss})).is_ok());
        assert_eq!(
            at(json!({"exp": exp, "aud": "other", "iss": iss})),
            Err(Invalid::WrongAudience)
        );
        assert_eq!(
            at(json!({"exp": exp, "iss": iss})),
            Err(Invalid::WrongAudience)
        );
        assert_eq!(
            at(json!({"exp": exp, "aud": "hub", "iss": "https://evil.example"})),
            Err(Invalid::WrongIssuer)
        );
        assert_eq!(
            at(json!({"exp": exp, "aud": "hub"})),
            Err(Invalid::WrongIssuer)
        );
        // Without the options neither claim is looked at.
        let open = signed(KeySet::secret(SECRET).unwrap());
        let t = sign(
            Algorithm::HS256,
            &k,
            &json!({"exp": exp, "aud": "x", "iss": "y"}),
        );
        assert!(verify(&open, &t).is_ok());
    }

    #[test]
    fn malformed_tokens_and_grants() {
        let s = signed(KeySet::secret(SECRET).unwrap());
        let k = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.e30.x",
            "bm90IGpzb24.e30.x",
        ] {
            assert_eq!(verify(&s, token), Err(Invalid::Malformed), "{token}");
        }
        let good = sign(Algorithm::HS256, &k, &claims());
        let (head, _) = good.split_once('.').unwrap();
        assert_eq!(verify(&s, &format!("{head}.!!.x")), Err(Invalid::Malformed));
        let crit = jsonwebtoken::Header {
            crit: Some(vec!["exp".into()]),
            ..Header::new(Algorithm::HS256)
        };
        let t = encode(&crit, &claims(), &k).unwrap();
        assert_eq!(verify(&s, &t), Err(Invalid::Malformed));
        for grants in [
            json!("*"),
            json!({"subscribe": "*"}),
            json!({"subscribe": [1]}),
            json!({"publish": [""]}),
            json!({"publish": ["a\nb"]}),
        ] {
            let t = sign(
                Algorithm::HS256,
                &k,
                &json!({"exp": NOW + 9, "ssehub": grants}),
            );
            assert_eq!(verify(&s, &t), Err(Invalid::BadGrants), "{grants}");
        }
        let t = sign(Algorithm::HS256, &k, &json!({"exp": NOW + 9}));
        let c = verify(&s, &t).unwrap();
        assert!(c.publish.is_empty() && c.subscribe.is_empty() && c.sub.is_none());
    }

    #[test]
    fn key_sets_choose_by_kid() {
        let jwks = KeySet::jwks(&key("jwks-old.json")).unwrap();
        assert_eq!(jwks.ids(), "old, ed");
        let s = signed(jwks);
        let rsa = EncodingKey::from_rsa_pem(&key("rsa.pem")).unwrap();
        let ed = EncodingKey::from_ed_pem(&key("ed25519.pem")).unwrap();
        let with_kid = |alg, kid: Option<&str>, k: &EncodingKey| {
            let h = Header {
                kid: kid.map(str::to_owned),
                ..Header::new(alg)
            };
            encode(&h, &claims(), k).unwrap()
        };
        assert!(verify(&s, &with_kid(Algorithm::RS256, Some("old"), &rsa)).is_ok());
        assert!(verify(&s, &with_kid(Algorithm::PS512, Some("old"), &rsa)).is_ok());
        assert!(verify(&s, &with_kid(Algorithm::EdDSA, Some("ed"), &ed)).is_ok());
        let mismatch = with_kid(Algorithm::EdDSA, Some("old"), &ed);
        assert_eq!(verify(&s, &mismatch), Err(Invalid::Algorithm));
        let unknown = with_kid(Algorithm::RS256, Some("new"), &rsa);
        assert_eq!(verify(&s, &unknown), Err(Invalid::UnknownKey));
        let no_kid = with_kid(Algorithm::RS256, None, &rsa);
        assert_eq!(verify(&s, &no_kid), Err(Invalid::UnknownKey));
    }

    #[test]
    fn key_files_are_checked() {
        assert!(KeySet::secret("short").is_err());
        let private = KeySet::pem(&key("rsa.pem")).unwrap_err();
        assert!(private.contains("private key"), "{private}");
        assert!(KeySet::pem(b"not a key").is_err());
        assert!(
            KeySet::pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
        assert!(KeySet::jwks(b"{}").is_err());
        assert!(KeySet::jwks(b"{\"keys\": []}").is_err());
        assert!(KeySet::jwks(b"[").is_err());
        let set = |keys: Value| KeySet::jwks(json!({ "keys": keys }).to_string().as_bytes());
        let oct = json!({"kty": "oct", "kid": "h", "k": "c2hvcnQ"});
        assert!(set(json!([oct]))
            .unwrap_err()
            .contains("shorter than 32 bytes"));
        let long = json!({"kty": "oct", "kid": "h", "alg": "HS384",
            "k": "YW4gSE1BQyBzZWNyZXQgb2YgYXQgbGVhc3QgMzIgYnl0ZXM"});
        let keys =
            set(json!([long, {"kty": "RSA", "kid": "e", "use": "enc", "n": "AQAB", "e": "AQAB"}]))
                .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.keys[0].algorithms, [Algorithm::HS384]);
        assert_eq!(keys.skipped.len(), 1, "{:?}", keys.skipped);
        assert!(set(json!([long, long])).unwrap_err().contains("twice"));
        let wrong_alg = json!({"kty": "oct", "kid": "h", "alg": "RS256",
            "k": "YW4gSE1BQyBzZWNyZXQgb2YgYXQgbGVhc3QgMzIgYnl0ZXM"});
        assert!(set(json!([wrong_alg]))
            .unwrap_err()
            .contains("does not fit"));
        let tiny_rsa = json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"});
        assert!(set(json!([tiny_rsa])).is_err());
    }

    fn grants(subscribe: &[&str], missing: Option<&'static str>) -> Grants {
        Grants {
            publish: TopicFilter::default(),
            subscribe: TopicFilter::new(subscribe.iter().map(|s| Selector::parse(s).unwrap())),
            sub: None,
            exp: None,
            missing,
        }
    }

    fn asked(topics: &[&str]) -> Vec<Selector> {
        topics.iter().map(|t| Selector::parse(t).unwrap()).collect()
    }

    #[test]
    fn subscriptions_stay_within_the_grants() {
        let g = grants(&["users/1/*", "news"], None);
        let f = g.subscription(&asked(&["users/1/x"])).unwrap();
        assert!(f.matches("users/1/x") && !f.matches("news"));
        let f = g.subscription(&[]).unwrap();
        assert!(f.matches("users/1/x") && f.matches("news") && !f.matches("users/2/x"));
        let refused = g.subscription(&asked(&["news", "users/2/x"])).unwrap_err();
        assert_eq!(
            refused,
            Denied {
                status: 403,
                reason: "topic not granted: users/2/x".into(),
                challenge: Some(
                    "Bearer error=\"insufficient_scope\", \
                     error_description=\"topic not granted: users/2/x\""
                        .into()
                ),
            }
        );
        assert_eq!(
            g.subscription(&asked(&["users/*"])).unwrap_err().status,
            403
        );
        assert_eq!(g.subscription(&asked(&["*"])).unwrap_err().status, 403);
        assert_eq!(grants(&[], None).subscription(&[]).unwrap_err().status, 403);
        // Without a token, what is not anonymous needs one.
        let anonymous = grants(&["public/*"], Some("missing token"));
        assert!(anonymous.subscription(&[]).is_ok());
        let r = anonymous.subscription(&asked(&["users/1/x"])).unwrap_err();
        assert_eq!((r.status, r.challenge.as_deref()), (401, Some("Bearer")));
        let publish = Grants {
            publish: TopicFilter::new(asked(&["users/1/*"])),
            ..grants(&[], None)
        };
        assert!(publish.publish_to("users/1/x").is_ok());
        assert_eq!(publish.publish_to("users/2/x").unwrap_err().status, 403);
    }

    #[test]
    fn challenges_are_header_safe() {
        assert_eq!(
            challenge("invalid_token", "expired"),
            "Bearer error=\"invalid_token\", error_description=\"expired\""
        );
        assert_eq!(
            challenge("insufficient_scope", "topic not granted: a\"b\\c%d é"),
            "Bearer error=\"insufficient_scope\", \
             error_description=\"topic not granted: a%22b%5Cc%25d %C3%A9\""
        );
        for why in [
            Invalid::Malformed,
            Invalid::UnknownKey,
            Invalid::Algorithm,
            Invalid::BadSignature,
            Invalid::NoExp,
            Invalid::Expired,
            Invalid::NotYetValid,
            Invalid::WrongAudience,
            Invalid::WrongIssuer,
            Invalid::BadGrants,
        ] {
            let d = Denied::invalid(why);
            assert_eq!(d.status, 401);
            assert!(d.challenge.unwrap().contains("error=\"invalid_token\""));
        }
    }

    fn head(fields: &[(&str, &str)]) -> Head {
        Head {
            method: tiny_http::Method::Get,
            target: "/events".into(),
            http10: false,
            headers: fields
                .iter()
                .map(|(k, v)| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap())
                .collect(),
        }
    }

    #[test]
    fn carriers() {
        assert_eq!(bearer(&head(&[])), Ok(None));
        assert_eq!(
            bearer(&head(&[("Authorization", "Bearer  t")])),
            Ok(Some("t"))
        );
        assert_eq!(
            bearer(&head(&[("Authorization", "bearer t")])),
            Ok(Some("t"))
        );
        assert_eq!(bearer(&head(&[("Authorization", "Basic t")])), Ok(None));
        assert_eq!(bearer(&head(&[("Authorization", "Bearer")])), Err(()));
        let twice = [("Authorization", "Bearer a"), ("Authorization", "Bearer a")];
        assert_eq!(bearer(&head(&twice)), Err(()));
        let h = head(&[("Cookie", "a=1; ssehub_authorization=tok; b=2")]);
        assert_eq!(cookie(&h), Some("tok"));
        let h = head(&[("Cookie", "a=1"), ("Cookie", "ssehub_authorization=\"q\"")]);
        assert_eq!(cookie(&h), Some("q"));
        assert_eq!(
            cookie(&head(&[("Cookie", "xssehub_authorization=t")])),
            None
        );
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn host_names() {
        for (host, name) in [
            ("LocalHost:8080", "localhost"),
            ("hub.example.", "hub.example"),
            ("[::1]:80", "[::1]"),
            ("[0:0::1]", "[::1]"),
            ("[2001:DB8::1]:", "[2001:db8::1]"),
            ("127.0.0.1", "127.0.0.1"),
            ("", ""),
        ] {
            assert_eq!(host_name(host), Ok(name.to_string()), "{host}");
        }
        for host in [
            "localhost:80@evil.example",
            "localhost@evil.example",
            "localhost:8080:evil",
            "localhost:8o",
            "[::1]evil",
            "[::1]:80@evil",
            "[::1",
            "[evil]",
            "localhost/x",
            "local host",
        ] {
            assert_eq!(host_name(host), Err(()), "{host}");
        }
        for name in [
            "localhost",
            "a.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in [
            "",
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "[::1",
            "0x7f.1",
        ] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }
}
