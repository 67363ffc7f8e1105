//! Redis's glob-style key patterns, as `KEYS` and `SCAN ... MATCH` take them.
//!
//! - `*` matches any run of bytes (also none), `?` any one byte;
//! - `[abc]` one of the bytes listed, `[a-z]` a range (either order), `[^...]` any byte
//!   not listed; inside brackets `\x` is the byte `x`, and a pattern that ends inside
//!   brackets ends the class there;
//! - `\x` outside brackets is the byte `x` (a trailing `\` is itself);
//! - everything else is itself, compared byte by byte (case-sensitive);
//! - an empty key matches only the empty pattern and `*` (Redis's `KEYS` and `SCAN` treat
//!   a lone `*` as "everything" without matching).
//!
//! The rules are those of Redis's `stringmatchlen`. The matcher differs in cost only: a
//! star backtracks to its own last position and never into an earlier star, so a match
//! takes at most `pattern.len() * key.len()` steps whatever the pattern (Redis bounds its
//! recursion instead).

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    matches_with(pattern, key, false)
}

/// Whether `key` matches `pattern`, ASCII letters compared without case, as Redis
/// matches `CONFIG GET` patterns. A range's ends are ordered first and lowercased after,
/// as in Redis: `[Z-a]` becomes `z`..`a`, which holds no byte.
pub fn matches_nocase(pattern: &[u8], key: &[u8]) -> bool {
    matches_with(pattern, key, true)
}

fn matches_with(pattern: &[u8], key: &[u8], nocase: bool) -> bool {
    if key.is_empty() {
        return pattern.is_empty() || pattern == b"*";
    }
    let mut p = 0;
    let mut k = 0;
    // After the last star seen: where the pattern resumes, and where in the key the
    // star's run ends so far.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            star = Some((p, k));
            continue;
        }
        if let Some(next) = element(pattern, p, key[k], nocase) {
            p = next;
            k += 1;
            continue;
        }
        // A mismatch (or the pattern ended): the last star takes one more byte.
        let Some((resume, run_end)) = star else {
            return false;
        };
        p = resume;
        k = run_end + 1;
        star = Some((resume, k));
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the pattern element at `p` (not a star): the position after
/// the element, or `None` on a mismatch or at the pattern's end.
fn element(pattern: &[u8], p: usize, c: u8, nocase: bool) -> Option<usize> {
    let same = |x: u8| x == c || (nocase && x.eq_ignore_ascii_case(&c));
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => same(pattern[p + 1]).then_some(p + 2),
        b'[' => class(pattern, p + 1, c, nocase),
        x => same(x).then_some(p + 1),
    }
}

/// A bracket class starting at `p` (after the `[`): the position after its `]` (or the
/// pattern's end) if `c` is in it.
fn class(pattern: &[u8], mut p: usize, c: u8, nocase: bool) -> Option<usize> {
    let same = |x: u8| x == c || (nocase && x.eq_ignore_ascii_case(&c));
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut found = false;
    loop {
        match pattern.get(p) {
            None => break,
            Some(b'\\') if p + 1 < pattern.len() => {
                // Exact case even without case, as in Redis.
                p += 1;
                found |= pattern[p] == c;
            }
            Some(b']') => {
                p += 1;
                break;
            }
            Some(&start) if p + 2 < pattern.len() && pattern[p + 1] == b'-' => {
                found |= in_range(start, pattern[p + 2], c, nocase);
                p += 2;
            }
            Some(&x) => found |= same(x),
        }
        p += 1;
    }
    (found != negate).then_some(p)
}

/// Whether `c` lies between `a` and `b` (either order), the bytes compared as C's `char`
/// on the platforms Redis is mostly built for (signed: `[a-\xff]` is `[\xff-a]`).
fn in_range(a: u8, b: u8, c: u8, nocase: bool) -> bool {
    let [a, b, c] = [a, b, c].map(|x| i8::from_ne_bytes([x]));
    let (lo, hi) = (a.min(b), a.max(b));
    if nocase {
        // Ordered first, lowercased after, as Redis does.
        let lower = |x: i8| i8::from_ne_bytes([x.to_ne_bytes()[0].to_ascii_lowercase()]);
        (lower(lo)..=lower(hi)).contains(&lower(c))
    } else {
        (lo..=hi).contains(&c)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{matches, matches_nocase};

    /// The reference: Redis's `SCAN`/`KEYS` rule, `*` alone or `stringmatchlen`.
    fn redis(pattern: &[u8], key: &[u8]) -> bool {
        pattern == b"*" || stringmatchlen(pattern, key)
    }

    /// Redis's recursive `stringmatchlen` (case-sensitive), transcribed.
    fn stringmatchlen(pattern: &[u8], key: &[u8]) -> bool {
        let (mut p, mut s) = (0usize, 0usize);
        while p < pattern.len() && s < key.len() {
            match pattern[p] {
                b'*' => {
                    while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                        p += 1;
                    }
                    if p + 1 == pattern.len() {
                        return true;
                    }
                    return (s..key.len()).any(|i| stringmatchlen(&pattern[p + 1..], &key[i..]));
                }
                b'?' => s += 1,
                b'[' => {
                    p += 1;
                    let not = pattern.get(p) == Some(&b'^');
                    if not {
                        p += 1;
                    }
                    let mut hit = false;
                    loop {
                        if pattern.get(p) == Some(&b'\\') && pattern.len() - p >= 2 {
                            p += 1;
                            hit |= pattern[p] == key[s];
                        } else if pattern.get(p) == Some(&b']') {
                            break;
                        } else if p >= pattern.len() {
                            p -= 1;
                            break;
                        } else if pattern.len() - p >= 3 && pattern[p + 1] == b'-' {
                            // C's (signed) `char`s.
                            let [mut a, mut b, c] = [pattern[p], pattern[p + 2], key[s]]
                                .map(|x| i8::from_ne_bytes([x]));
                            if a > b {
                                std::mem::swap(&mut a, &mut b);
                            }
                            hit |= a <= c && c <= b;
                            p += 2;
                        } else {
                            hit |= pattern[p] == key[s];
                        }
                        p += 1;
                    }
                    if hit == not {
                        return false;
                    }
                    s += 1;
                }
                b'\\' if pattern.len() - p >= 2 => {
                    p += 1;
                    if pattern[p] != key[s] {
                        return false;
                    }
                    s += 1;
                }
                c => {
                    if c != key[s] {
                        return false;
                    }
                    s += 1;
                }
            }
            p += 1;
            if s == key.len() {
                while p < pattern.len() && pattern[p] == b'*' {
                    p += 1;
                }
                break;
            }
        }
        p == pattern.len() && s == key.len()
    }

    #[test]
    fn redis_documented_examples() {
        for (pattern, yes, no) in [
            (
                "h?llo",
                &["hello", "hallo", "hxllo"][..],
                &["hllo", "heello"][..],
            ),
            ("h*llo", &["hllo", "heeeello", "hello"], &["hell", "hallo!"]),
            ("h[ae]llo", &["hello", "hallo"], &["hillo", "hllo"]),
            ("h[^e]llo", &["hallo", "hbllo"], &["hello", "hllo"]),
            ("h[a-b]llo", &["hallo", "hbllo"], &["hcllo", "hello"]),
            ("h[b-a]llo", &["hallo", "hbllo"], &["hcllo"]),
            ("*", &["", "anything"], &[]),
            ("", &[""], &["a"]),
            (
                "user:*:name",
                &["user:1:name", "user::name"],
                &["user:1:age"],
            ),
            (r"a\*b", &["a*b"], &["axb", "a\\*b"]),
            (r"a\", &["a\\"], &["a"]),
            ("[a-", &["a", "-"], &["b"]),
            ("[]x", &[], &["x", "]x", "]"]),
            (r"[\]]", &["]"], &["\\"]),
            ("[^", &["z"], &["", "zz"]),
            ("**", &["x"], &[""]),
        ] {
            for key in yes {
                assert!(
                    matches(pattern.as_bytes(), key.as_bytes()),
                    "{pattern} ~ {key}"
                );
                assert!(
                    redis(pattern.as_bytes(), key.as_bytes()),
                    "reference: {pattern} ~ {key}"
                );
            }
            for key in no {
                assert!(
                    !matches(pattern.as_bytes(), key.as_bytes()),
                    "{pattern} !~ {key}"
                );
                assert!(
                    !redis(pattern.as_bytes(), key.as_bytes()),
                    "reference: {pattern} !~ {key}"
                );
            }
        }
    }

    #[test]
    fn ranges_compare_bytes_as_signed_chars() {
        // `[a-\xff]` is `[\xff-a]`: the bytes 0xff and 0x00-0x61.
        for (key, want) in [
            (&b"A"[..], true),
            (b"\xff", true),
            (b"b", false),
            (b"\x80", false),
        ] {
            assert_eq!(matches(b"[a-\xff]", key), want, "{key:?}");
            assert_eq!(redis(b"[a-\xff]", key), want, "reference: {key:?}");
        }
    }

    #[test]
    fn without_case_like_config_get() {
        assert!(matches_nocase(b"MAX*", b"maxmemory"));
        assert!(matches_nocase(b"[M]axmemory", b"maxmemory"));
        assert!(matches_nocase(b"\\Maxmemory", b"maxmemory"));
        assert!(!matches(b"MAX*", b"maxmemory"));
        // `[Z-a]`: ordered (0x5a..0x61), then lowercased: `z`..`a`, which holds nothing
        // (checked against redis-server 7.0.15's CONFIG GET).
        assert!(!matches_nocase(b"[Z-a]axmemory", b"maxmemory"));
        assert!(matches_nocase(b"[A-Z]axmemory", b"maxmemory"));
        // An escaped byte in a class keeps its case (Redis: `CONFIG GET sav[\E]` is empty).
        assert!(!matches_nocase(b"sav[\\E]", b"save"));
        assert!(matches_nocase(b"sav[\\e]", b"save"));
    }

    #[test]
    fn stars_cost_linear_steps_not_exponential() {
        let pattern = "a*".repeat(30) + "b";
        let key = "a".repeat(200);
        assert!(!matches(pattern.as_bytes(), key.as_bytes()));
    }

    proptest! {
        /// Agrees with Redis's algorithm on patterns and keys over a small alphabet that
        /// makes every construct (stars, classes, ranges, escapes, unterminated brackets)
        /// frequent.
        #[test]
        fn agrees_with_redis(
            pattern in proptest::collection::vec(prop::sample::select(b"ab-*?[]^\\\xf0".to_vec()), 0..10),
            key in proptest::collection::vec(prop::sample::select(b"ab-]^\\\xf0".to_vec()), 0..8),
        ) {
            prop_assert_eq!(matches(&pattern, &key), redis(&pattern, &key));
        }
    }
}
