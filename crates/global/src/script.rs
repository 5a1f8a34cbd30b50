//! The check script (`check.lua`): how it is invoked and what its reply means.

use std::time::Duration;

use meshlimit_bucket::Decision;
use redis::{Cmd, Value};

use crate::{GlobalError, GlobalSettings};

/// The script's source; the crate documentation and the script's header say what it does.
pub(crate) const SOURCE: &str = include_str!("check.lua");

/// The script's SHA-1 (what EVALSHA names it by), computed once.
pub(crate) fn sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| redis::Script::new(SOURCE).get_hash().to_string())
}

/// `SCRIPT LOAD`, whose answer must be [`sha`].
pub(crate) fn load_cmd() -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(SOURCE);
    cmd
}

/// One check: EVALSHA with the bucket's key, the time (`None`: Redis's own `TIME`) and the
/// plan.
pub(crate) fn check_cmd(
    name: &str,
    settings: &GlobalSettings,
    now_ns: Option<u64>,
    ttl_ms: u64,
) -> Cmd {
    let (mode, max, a, b) = settings.plan_args();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha()).arg(1).arg(name);
    match now_ns {
        Some(ns) => cmd.arg(ns),
        None => cmd.arg(""),
    };
    cmd.arg(mode).arg(max).arg(a).arg(b).arg(ttl_ms);
    cmd
}

/// `{admitted, remaining, next token in ns}`, checked: nothing Redis sends is trusted to fit.
pub(crate) fn decision(reply: Value) -> Result<Decision, GlobalError> {
    let Value::Array(items) = reply else {
        return Err(GlobalError::Reply(format!("not an array: {reply:?}")));
    };
    let [admitted, remaining, wait] = items.as_slice() else {
        return Err(GlobalError::Reply(format!(
            "{} items instead of 3: {items:?}",
            items.len()
        )));
    };
    let admitted = match number(admitted, "admitted")? {
        0 => false,
        1 => true,
        n => return Err(GlobalError::Reply(format!("admitted is {n}, not 0 or 1"))),
    };
    let remaining = number(remaining, "remaining")?;
    if remaining > meshlimit_bucket::MAX_TOKENS_LIMIT {
        return Err(GlobalError::Reply(format!("{remaining} tokens remaining")));
    }
    let wait = number(wait, "next token")?;
    Ok(Decision::new(
        admitted,
        remaining,
        Duration::from_nanos(wait),
    ))
}

fn number(value: &Value, what: &str) -> Result<u64, GlobalError> {
    let parsed = match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| GlobalError::Reply(format!("{what} is not a natural number: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked() {
        let ok = Value::Array(vec![
            Value::Int(1),
            Value::Int(41),
            Value::BulkString(b"18446744073709551615".to_vec()),
        ]);
        let d = decision(ok).unwrap();
        assert!(d.admitted());
        assert_eq!(d.remaining(), 41);
        assert_eq!(d.next_token_in(), Duration::from_nanos(u64::MAX));
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1), Value::Int(1)]),
            Value::Array(vec![Value::Int(2), Value::Int(1), Value::Int(0)]),
            Value::Array(vec![Value::Int(1), Value::Int(-1), Value::Int(0)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                Value::BulkString(b"1e9".to_vec()),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                Value::BulkString(b"18446744073709551616".to_vec()),
            ]),
        ] {
            assert!(matches!(decision(bad), Err(GlobalError::Reply(_))));
        }
    }

    #[test]
    fn the_sha_is_the_sources() {
        assert_eq!(sha().len(), 40);
        assert_eq!(sha(), redis::Script::new(SOURCE).get_hash());
    }
}
