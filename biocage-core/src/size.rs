//! Human sizes ("512m", "1.5g", "64k", "1048576") as bytes.

use crate::error::{Error, Result};

/// Parses a size with an optional binary suffix (k, m, g, t; "b" and "ib" allowed).
pub fn parse_size(field: &'static str, text: &str) -> Result<u64> {
    let bad = |reason: &str| Error::InvalidConfig {
        field,
        value: text.to_string(),
        reason: format!("{reason}; use a number of bytes or a size such as 512m, 2g, 64k"),
    };
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some(_) => (t, 1),
        None => return Err(bad("empty size")),
    };
    let value: f64 = num.trim().parse().map_err(|_| bad("not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad("must be a positive number"));
    }
    let bytes = value * mult as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(bad("too large"));
    }
    // Finite, non-negative and below u64::MAX / 2: the conversion cannot wrap.
    #[allow(clippy::cast_possible_truncation)]
    let whole = bytes as u64;
    Ok(whole)
}

/// Formats bytes the way [`parse_size`] reads them, e.g. "512m".
pub fn format_size(bytes: u64) -> String {
    for (suffix, mult) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{suffix}", bytes / mult);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("memory", "512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("memory", "1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("memory", "64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("memory", "1024").unwrap(), 1024);
        assert_eq!(parse_size("memory", " 2G ").unwrap(), 2 << 30);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let err = parse_size("memory", "lots").unwrap_err().to_string();
        assert!(err.contains("memory") && err.contains("512m"), "{err}");
        assert!(parse_size("memory", "-1m").is_err());
        assert!(parse_size("memory", "").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for b in [512u64 << 20, 1 << 30, 3 << 10, 1000] {
            assert_eq!(parse_size("x", &format_size(b)).unwrap(), b);
        }
    }
}
