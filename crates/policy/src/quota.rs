//! The one quota type every data path enforces, and the typed reject response.
//!
//! A [`Quota`] is a validated token bucket: it holds the engine's [`Settings`], built once when
//! a document is parsed (or a peer's message is decoded), so what validation accepts is exactly
//! what the proxy, the kernel, xDS and the simulator serve — there is no second conversion that
//! could refuse it later. The written forms are views of it: [`Rate`] (`{num, interval}` of a
//! `MeshRateLimit`, smooth refill) and [`TokenBucket`] (`maxTokens`, `tokensPerFill`,
//! `fillInterval` of a `RateLimit`, interval refill).
//!
//! The reject response is typed the same way: [`RejectStatus`] is an HTTP status and
//! [`HeaderValue`] a header name and value that `http` accepts as they are.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use meshlimit_bucket::{Refill, Settings, SettingsError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quota cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("must be greater than 0")]
    Zero,
    #[error("{0}")]
    Bucket(#[from] SettingsError),
}

/// A token bucket that every data path can enforce exactly. Cannot be built invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota(Settings);

impl Quota {
    /// A bucket of `max_tokens`, refilled with `tokens_per_fill` per `fill_interval`.
    pub fn new(
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval: Duration,
        refill: Refill,
    ) -> Result<Quota, QuotaError> {
        Ok(Quota(Settings::new(
            max_tokens,
            tokens_per_fill,
            fill_interval,
            refill,
        )?))
    }

    /// The engine's settings: the only conversion, made when the quota was built.
    pub fn settings(&self) -> Settings {
        self.0
    }

    pub fn max_tokens(&self) -> u64 {
        self.0.max_tokens()
    }

    pub fn tokens_per_fill(&self) -> u64 {
        self.0.tokens_per_fill()
    }

    pub fn fill_interval(&self) -> Duration {
        self.0.fill_interval()
    }

    pub fn fill_interval_ns(&self) -> u64 {
        self.0.fill_interval_ns()
    }

    pub fn refill(&self) -> Refill {
        self.0.refill()
    }
}

/// A `MeshRateLimit` rate `{num, interval}`: a bucket of `num` tokens refilled smoothly at
/// `num / interval`, as Envoy 1.40 does. Serialized as `{num, interval: "10s"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    num: NonZeroU32,
    quota: Quota,
}

impl Rate {
    pub fn new(num: u32, interval: Duration) -> Result<Rate, QuotaError> {
        let num = NonZeroU32::new(num).ok_or(QuotaError::Zero)?;
        let n = u64::from(num.get());
        let quota = Quota::new(n, n, interval, Refill::Smooth)?;
        Ok(Rate { num, quota })
    }

    pub fn num(&self) -> NonZeroU32 {
        self.num
    }

    pub fn interval(&self) -> Duration {
        self.quota.fill_interval()
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub fn settings(&self) -> Settings {
        self.quota.settings()
    }
}

#[derive(Serialize, Deserialize)]
struct RateForm {
    num: u32,
    #[serde(with = "crate::duration::serde_go")]
    interval: Duration,
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RateForm {
            num: self.num.get(),
            interval: self.interval(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let form = RateForm::deserialize(d)?;
        Rate::new(form.num, form.interval).map_err(serde::de::Error::custom)
    }
}

/// A `RateLimit` rule: `maxTokens`, `tokensPerFill` every `fillInterval` (nanoseconds), whole
/// intervals only (the kernel's arithmetic). The kernel program serves every such bucket
/// exactly. Serialized in those units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket(Quota);

impl TokenBucket {
    pub fn new(
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval_ns: u64,
    ) -> Result<TokenBucket, QuotaError> {
        if max_tokens == 0 || tokens_per_fill == 0 || fill_interval_ns == 0 {
            return Err(QuotaError::Zero);
        }
        let quota = Quota::new(
            max_tokens,
            tokens_per_fill,
            Duration::from_nanos(fill_interval_ns),
            Refill::Interval,
        )?;
        // The kernel program's arithmetic is proven for these bounds (bpf/meshlimit.bpf.c,
        // REBASE_INTERVALS): widening the engine's limits must revisit that proof.
        const _: () = assert!(
            meshlimit_bucket::MAX_TOKENS_LIMIT <= 1 << 40
                && meshlimit_bucket::TOKENS_PER_FILL_LIMIT <= 1 << 32
        );
        Ok(TokenBucket(quota))
    }

    pub fn quota(&self) -> Quota {
        self.0
    }

    pub fn settings(&self) -> Settings {
        self.0.settings()
    }

    pub fn max_tokens(&self) -> u64 {
        self.0.max_tokens()
    }

    pub fn tokens_per_fill(&self) -> u64 {
        self.0.tokens_per_fill()
    }

    pub fn fill_interval_ns(&self) -> u64 {
        self.0.fill_interval_ns()
    }
}

/// How a [`TokenBucket`] is written: in YAML (`fillInterval`) and on the wire
/// (`fillIntervalNs`, as part of a kernel limit).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenBucketForm {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: u64,
}

impl From<TokenBucket> for TokenBucketForm {
    fn from(b: TokenBucket) -> TokenBucketForm {
        TokenBucketForm {
            max_tokens: b.max_tokens(),
            tokens_per_fill: b.tokens_per_fill(),
            fill_interval: b.fill_interval_ns(),
        }
    }
}

impl Serialize for TokenBucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TokenBucketForm::from(*self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TokenBucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TokenBucket, D::Error> {
        let f = TokenBucketForm::deserialize(d)?;
        TokenBucket::new(f.max_tokens, f.tokens_per_fill, f.fill_interval)
            .map_err(serde::de::Error::custom)
    }
}

/// The status a rejected request gets: a valid HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RejectStatus(http::StatusCode);

impl RejectStatus {
    /// What Envoy and Kuma answer when the policy leaves the status unset.
    pub const DEFAULT: RejectStatus = RejectStatus(http::StatusCode::TOO_MANY_REQUESTS);

    /// Any status `http` accepts (100..=999); validation narrows it further.
    pub fn new(code: u16) -> Option<RejectStatus> {
        http::StatusCode::from_u16(code).ok().map(RejectStatus)
    }

    pub fn code(&self) -> http::StatusCode {
        self.0
    }

    pub fn as_u16(&self) -> u16 {
        self.0.as_u16()
    }
}

impl PartialEq<u16> for RejectStatus {
    fn eq(&self, other: &u16) -> bool {
        self.0.as_u16() == *other
    }
}

impl fmt::Display for RejectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_u16())
    }
}

impl Serialize for RejectStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0.as_u16())
    }
}

impl<'de> Deserialize<'de> for RejectStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RejectStatus, D::Error> {
        let code = u16::deserialize(d)?;
        RejectStatus::new(code)
            .ok_or_else(|| serde::de::Error::custom(format!("{code} is not an HTTP status code")))
    }
}

/// Why a header name or value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("must be 1 to 256 characters matching ^[a-z0-9!#$%&'*+\\-.^_`|~]+$ (lowercase)")]
    Name,
    #[error("must not contain control characters such as newlines")]
    Value,
    /// A header that frames the message or the connection: set on a rejection, it would make
    /// the client misread the response or the next one on the connection.
    #[error("must not be a hop-by-hop or framing header ({0}): the proxy sets it")]
    Framing(&'static str),
}

/// Headers the proxy owns on every response it writes. (Pseudo-headers such as `:status`
/// already fail the token rule.)
const FRAMING: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A header of a rejected response: a lowercase token name and a value without control
/// characters, both already in the form the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValue {
    name: http::HeaderName,
    value: http::HeaderValue,
}

impl HeaderValue {
    pub fn new(name: &str, value: &str) -> Result<HeaderValue, HeaderError> {
        Ok(HeaderValue {
            name: header_name(name)?,
            value: header_value(value)?,
        })
    }

    pub fn name(&self) -> &http::HeaderName {
        &self.name
    }

    pub fn value(&self) -> &http::HeaderValue {
        &self.value
    }

    /// The value as text (validated as such when built).
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(self.value.as_bytes()).unwrap_or_default()
    }
}

/// Kuma's header name rule (lowercase tokens, at most 256 characters), less the headers that
/// frame the response. The one check for parsed policies and for peers' JSON alike.
pub(crate) fn header_name(name: &str) -> Result<http::HeaderName, HeaderError> {
    let token = (1..=256).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if !token {
        return Err(HeaderError::Name);
    }
    if let Some(framing) = FRAMING.into_iter().find(|f| *f == name) {
        return Err(HeaderError::Framing(framing));
    }
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::Name)
}

/// No control characters but tab (stricter than `http`, which only refuses C0 and DEL).
pub(crate) fn header_value(value: &str) -> Result<http::HeaderValue, HeaderError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(HeaderError::Value);
    }
    http::HeaderValue::from_str(value).map_err(|_| HeaderError::Value)
}

#[derive(Serialize, Deserialize)]
struct HeaderForm<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    value: std::borrow::Cow<'a, str>,
}

impl Serialize for HeaderValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HeaderForm {
            name: self.name.as_str().into(),
            value: self.value_str().into(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HeaderValue, D::Error> {
        let form = HeaderForm::deserialize(d)?;
        HeaderValue::new(&form.name, &form.value)
            .map_err(|e| serde::de::Error::custom(format!("header {:?}: {e}", form.name.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_smooth_buckets_of_num_tokens() {
        let rate = Rate::new(5, Duration::from_secs(10)).expect("valid");
        let s = rate.settings();
        assert_eq!((s.max_tokens(), s.tokens_per_fill()), (5, 5));
        assert_eq!(s.fill_interval(), Duration::from_secs(10));
        assert_eq!(s.refill(), Refill::Smooth);
        assert_eq!(Rate::new(0, Duration::from_secs(1)), Err(QuotaError::Zero));
    }

    #[test]
    fn token_buckets_refill_in_whole_intervals() {
        let b = TokenBucket::new(10, 2, 1_000_000).expect("valid");
        assert_eq!(b.settings().refill(), Refill::Interval);
        assert_eq!(TokenBucket::new(0, 1, 1), Err(QuotaError::Zero));
        assert_eq!(TokenBucket::new(1, 1, 0), Err(QuotaError::Zero));
    }

    #[test]
    fn wire_forms_round_trip_and_refuse_what_cannot_be_built() {
        let rate = Rate::new(7, Duration::from_millis(1500)).expect("valid");
        let json = serde_json::to_string(&rate).expect("serializes");
        assert_eq!(json, r#"{"num":7,"interval":"1.5s"}"#);
        assert_eq!(serde_json::from_str::<Rate>(&json).expect("parses"), rate);
        assert!(serde_json::from_str::<Rate>(r#"{"num":0,"interval":"1s"}"#).is_err());

        let header = HeaderValue::new("x-limited", "yes").expect("valid");
        let json = serde_json::to_string(&header).expect("serializes");
        assert_eq!(
            serde_json::from_str::<HeaderValue>(&json).expect("parses"),
            header
        );
        assert!(serde_json::from_str::<HeaderValue>(r#"{"name":"X","value":"v"}"#).is_err());
        let framing =
            serde_json::from_str::<HeaderValue>(r#"{"name":"content-length","value":"0"}"#)
                .expect_err("a framing header is refused from peers too")
                .to_string();
        assert!(
            framing.contains("must not be a hop-by-hop or framing header (content-length)"),
            "{framing}"
        );
        assert!(serde_json::from_str::<RejectStatus>("42").is_err());
    }
}
