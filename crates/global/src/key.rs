//! Redis key names: `<prefix>{<key>}`, the caller's key as the hash tag.
//!
//! Redis Cluster hashes only the tag (the text between the first `{` and the first `}` after
//! it), so everything stored for one bucket — today one key, tomorrow a companion such as a
//! per-bucket configuration — lands in one slot, and a script may touch all of it.

/// The Redis key of the bucket `key`. `}` and `%` in `key` are percent-escaped, so the tag is
/// always the whole key and different keys never share a name.
pub(crate) fn bucket_key(prefix: &str, key: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + key.len() + 2);
    name.push_str(prefix);
    name.push('{');
    for c in key.chars() {
        match c {
            '%' => name.push_str("%25"),
            '}' => name.push_str("%7D"),
            c => name.push(c),
        }
    }
    name.push('}');
    name
}

/// The part of `name` that Redis Cluster hashes: the hash tag if there is a non-empty one,
/// else the whole name.
pub fn hash_tag(name: &str) -> &str {
    if let Some(open) = name.find('{')
        && let Some(len) = name[open + 1..].find('}')
        && len > 0
    {
        return &name[open + 1..open + 1 + len];
    }
    name
}

/// Whether `prefix` can go before a key's hash tag: no braces of its own.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.contains(['{', '}'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_whole_key() {
        for (key, name) in [
            ("svc/api", "ml:{svc/api}"),
            ("a}b", "ml:{a%7Db}"),
            ("{x}", "ml:{{x%7D}"),
            ("100%", "ml:{100%25}"),
            ("", "ml:{}"),
        ] {
            let got = bucket_key("ml:", key);
            assert_eq!(got, name);
            if !key.is_empty() {
                assert_eq!(hash_tag(&got), &got[4..got.len() - 1], "{key}");
            }
        }
        // Escaping keeps names apart.
        assert_ne!(bucket_key("p", "a}b"), bucket_key("p", "a%7Db"));
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("a{}b"), "a{}b");
        assert!(valid_prefix("meshlimit:") && !valid_prefix("x{y}:"));
    }
}
