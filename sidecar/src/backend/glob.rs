//! Redis-style glob patterns (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes).
//!
//! The Redis backend hands patterns to `SCAN MATCH`; the memory backend
//! matches with [`matches`], a port of Redis' `stringmatchlen` as fixed for
//! CVE-2022-36021 (Redis 7.0.10: a `*` that failed against every suffix
//! tells the enclosing ones to stop, so matching is polynomial, not
//! exponential), so both agree on every pattern that [`validate`] accepts.

/// Rejects patterns whose meaning would change once embedded in a longer
/// Redis pattern: an unterminated `[` class or a trailing lone `\`.
pub fn validate(pattern: &str) -> Result<(), &'static str> {
    let p = pattern.as_bytes();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => {
                if i + 1 == p.len() {
                    return Err("pattern ends with a lone '\\'");
                }
                i += 2;
            }
            b'[' => {
                i += 1;
                if p.get(i) == Some(&b'^') {
                    i += 1;
                }
                // Read as Redis reads it: an escape, the end, a range
                // `x-y` (whose `y` may be `]`), or one character.
                loop {
                    match p.get(i) {
                        None => return Err("pattern has a '[' without a closing ']'"),
                        Some(b'\\') if i + 1 < p.len() => i += 2,
                        Some(b']') => break,
                        Some(_) if i + 2 < p.len() && p[i + 1] == b'-' => {
                            if p[i + 2] == b']' {
                                return Err(
                                    "a class ends in '-]': Redis reads 'x-]' as a range up to ']'; write '\\-' for a dash",
                                );
                            }
                            // Redis compares C chars, signed on some
                            // platforms: a range is only portable in ASCII.
                            if !p[i].is_ascii() || !p[i + 2].is_ascii() {
                                return Err(
                                    "a range in a '[...]' class must be between ASCII characters",
                                );
                            }
                            i += 3;
                        }
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether `text` matches `pattern`, with Redis semantics.
pub fn matches(pattern: &str, text: &str) -> bool {
    let mut give_up = false;
    match_bytes(pattern.as_bytes(), text.as_bytes(), &mut give_up, 0)
}

/// Stars nested deeper than this match nothing (Redis' limit too).
const MAX_NESTING: usize = 1000;

/// `give_up` is set once a `*` has tried every suffix of the text in vain:
/// then no enclosing `*` can do better by starting later (it would offer
/// this one only shorter suffixes), so they all stop at once.
fn match_bytes(mut p: &[u8], mut s: &[u8], give_up: &mut bool, nesting: usize) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while let Some(&c) = p.first() {
        match c {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                // What follows the star needs a character: the empty
                // suffix never matches it.
                while !s.is_empty() {
                    if match_bytes(&p[1..], s, give_up, nesting + 1) {
                        return true;
                    }
                    if *give_up {
                        return false;
                    }
                    s = &s[1..];
                }
                *give_up = true;
                return false;
            }
            b'?' => {
                if s.is_empty() {
                    return false;
                }
                s = &s[1..];
            }
            b'[' => {
                let Some(&ch) = s.first() else { return false };
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    match p {
                        [] => break,
                        [b'\\', esc, ..] => {
                            matched |= *esc == ch;
                            p = &p[2..];
                        }
                        [b']', ..] => break,
                        [lo, b'-', hi, ..] => {
                            let (lo, hi) = if lo <= hi { (*lo, *hi) } else { (*hi, *lo) };
                            matched |= (lo..=hi).contains(&ch);
                            p = &p[3..];
                        }
                        [x, ..] => {
                            matched |= *x == ch;
                            p = &p[1..];
                        }
                    }
                }
                if matched == negate {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // Unterminated class (rejected by `validate`): Redis
                    // treats the end of pattern as the end of the class.
                    return s.is_empty();
                }
            }
            b'\\' if p.len() >= 2 => {
                if s.first() != Some(&p[1]) {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
            _ => {
                if s.first() != Some(&c) {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
    }
    s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_semantics() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("user:*", "user:1", true),
            ("user:*", "users:1", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*:session:*", "u:session:9", true),
            ("**x", "abx", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*a*a*a*b", "aaaaaaab", true),
            ("*a*b*a", "xaybza", true),
            ("*a*b*a", "xaybz", false),
            ("a*?", "a", false),
            ("a*?", "ab", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(matches(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    /// The patterns that took the backtracking matcher seconds to forever
    /// (one star per two bytes of the longest key, against the longest key
    /// of one letter) finish at once: each star tries each suffix once.
    #[test]
    fn the_worst_patterns_take_polynomial_time() {
        let key = "a".repeat(512);
        for pattern in [
            "*a".repeat(256),
            format!("{}b", "*a".repeat(255)),
            "*a*a*a*b".into(),
        ] {
            let done = std::thread::spawn(move || {
                let key = "a".repeat(512);
                matches(&pattern, &key)
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still matching after 10 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = done.join().unwrap();
        }
        assert!(matches(&"*a".repeat(256), &key));
        assert!(!matches(&format!("{}b", "*a".repeat(255)), &key));
    }

    #[test]
    fn validation_rejects_what_redis_would_read_differently() {
        assert!(validate("a[bc").is_err());
        assert!(validate("abc\\").is_err());
        assert!(validate("a[\\]]c").is_ok());
        assert!(validate("user:*:[0-9]").is_ok());
        assert!(validate("x\\\\").is_ok());
        // Redis reads `*-]` as the range '*'..']': the class would run on
        // into whatever follows the pattern (the hash tag's '}').
        assert!(validate(":[a*-]").is_err());
        assert!(validate(":[a*\\-]").is_ok());
        assert!(validate("[-a]").is_ok());
        assert!(validate("[a-\\]").is_ok());
        assert!(validate("[*é-{]").is_err());
        assert!(validate("[é- ]").is_err());
        assert!(validate("[é]").is_ok());
    }
}
