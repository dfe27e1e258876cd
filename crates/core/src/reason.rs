//! [`Reason`]: the short machine words marathon shows for why something
//! happened — in classifications, cooldowns, events, the status view, log
//! lines, the `x-marathon-attempts` header and the answers it writes to
//! clients.
//!
//! A reason often starts as text someone else sent: an upstream's error
//! code, a token endpoint's `error`, a header value. Such text can hold a
//! credential — an upstream that echoes the key it received, a token endpoint
//! that quotes the refresh token. So a `Reason` can be made only two ways:
//!
//! - from marathon's own words, a `&'static str` ([`Reason::fixed`], `From`),
//!   or composed of those and numbers ([`Reason::http`], [`Reason::with_status`]);
//! - from untrusted text through [`Reason::untrusted`], which keeps it only if
//!   it is one short word of `[A-Za-z0-9_.:-]` (at most [`MAX_WORD`] bytes),
//!   does not look like a credential (known key prefixes, long or high-entropy
//!   runs), and neither holds nor is part of a secret this process knows
//!   ([`crate::secret::scrubber`]). An error code such as `insufficient_quota`
//!   survives; a message, a key or a token does not.
//!
//! There is no `From<String>`: a string built at run time has to go through
//! the sanitizing constructor, so forgetting to sanitize does not compile.
//! Every reason is printable ASCII, at most [`MAX_LEN`] bytes, safe in a
//! header value, a metric label, JSON and a terminal.

use std::fmt;
use std::sync::Arc;

use crate::secret::Scrubber;

/// The longest word kept from untrusted text.
pub const MAX_WORD: usize = 48;
/// The longest reason.
pub const MAX_LEN: usize = 64;

/// Longest run of letters between separators that an error code has (the
/// longest real ones are about 18: `generativelanguage`); longer is a token.
const MAX_SEGMENT: usize = 24;

/// Prefixes of credentials in the wild: API keys (`sk-`, `sk-ant-`,
/// `sk-proj-`), sessions, JWTs (`eyJ`, base64 of `{"`), Google access tokens
/// and API keys, GitHub, GitLab and Slack tokens.
pub(crate) const CREDENTIAL_PREFIXES: [&str; 16] = [
    "sk-",
    "sk_",
    "sess-",
    "eyJ",
    "ya29.",
    "AIza",
    "gho_",
    "ghp_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "Bearer",
];

/// A short, printable word (or a few of them) that is safe to show anywhere.
/// See the [module docs](self).
#[derive(Clone)]
pub struct Reason(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Reason {
    /// Shown in place of a stored reason that fails the checks (an edited
    /// or damaged file).
    pub const REDACTED: Reason = Reason::fixed("redacted");

    /// One of marathon's own words: ASCII letters, digits, `_.:-` and single
    /// spaces, at most [`MAX_LEN`] bytes. Checked when debug assertions are
    /// on (so a `const` with a bad literal does not compile in tests); a
    /// literal is marathon's own text, never a secret, either way.
    pub const fn fixed(text: &'static str) -> Reason {
        if cfg!(debug_assertions) {
            assert!(is_phrase(text.as_bytes()), "not a reason phrase");
        }
        Reason(Repr::Static(text))
    }

    /// `http_<status>`, the reason when a response says nothing more.
    pub fn http(status: u16) -> Reason {
        // The common ones without an allocation (a success is classified
        // on every request).
        let fixed = match status {
            200 => "http_200",
            201 => "http_201",
            204 => "http_204",
            400 => "http_400",
            401 => "http_401",
            403 => "http_403",
            404 => "http_404",
            429 => "http_429",
            500 => "http_500",
            502 => "http_502",
            503 => "http_503",
            504 => "http_504",
            529 => "http_529",
            _ => return Reason(Repr::Shared(Arc::from(format!("http_{status}")))),
        };
        Reason(Repr::Static(fixed))
    }

    /// `<status> <reason>` (`429 rate_limit_error`), for a failover.
    pub fn with_status(status: u16, reason: &Reason) -> Reason {
        let text = format!("{status} {}", reason.as_str());
        if text.len() > MAX_LEN {
            return reason.clone();
        }
        Reason(Repr::Shared(Arc::from(text)))
    }

    /// A word from text marathon did not write (an error code, a header
    /// value), if it is one: see the [module docs](self). Surrounding
    /// whitespace is ignored. `None` for anything else.
    pub fn untrusted(text: &str) -> Option<Reason> {
        let word = text.trim();
        is_safe_word(word, &crate::secret::scrubber())
            .then(|| Reason(Repr::Shared(Arc::from(word))))
    }

    /// [`Reason::untrusted`], or `fallback` when the text is not a safe word.
    pub fn untrusted_or(text: &str, fallback: Reason) -> Reason {
        Reason::untrusted(text).unwrap_or(fallback)
    }

    /// Reads a reason marathon wrote earlier (the hot-state file, a status
    /// answer): every space-separated word must pass the checks of
    /// [`Reason::untrusted`], else the whole is [`Reason::REDACTED`].
    pub fn reread(text: &str) -> Reason {
        let scrubber = crate::secret::scrubber();
        let ok = !text.is_empty()
            && text.len() <= MAX_LEN
            && text.split(' ').all(|w| is_safe_word(w, &scrubber));
        if ok {
            Reason(Repr::Shared(Arc::from(text)))
        } else {
            Reason::REDACTED
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

/// Marathon's own phrase: words of the vocabulary separated by single spaces.
const fn is_phrase(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_LEN || b[0] == b' ' || b[b.len() - 1] == b' ' {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = is_word_byte(c) || (c == b' ' && b[i - 1] != b' ');
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

const fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-')
}

fn is_safe_word(word: &str, secrets: &Scrubber) -> bool {
    !word.is_empty()
        && word.len() <= MAX_WORD
        && word.bytes().all(is_word_byte)
        && !looks_like_credential(word)
        && !secrets.mentions(word)
}

/// Whether a word of the vocabulary is shaped like a key or a token rather
/// than an error code: a known credential prefix, or a run between
/// separators that is too long for a word, or long and holding a digit
/// (hex, base64), or long and of mixed case like random base64
/// (`userRateLimitExceeded` is camel case, not random: few capitals).
fn looks_like_credential(word: &str) -> bool {
    if CREDENTIAL_PREFIXES.iter().any(|p| {
        word.len() >= p.len() && word.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    }) {
        return true;
    }
    word.split(['_', '.', ':', '-']).any(|seg| {
        let len = seg.len();
        if len > MAX_SEGMENT {
            return true;
        }
        if len < 8 {
            return false;
        }
        let digits = seg.bytes().filter(u8::is_ascii_digit).count();
        let upper = seg.bytes().filter(u8::is_ascii_uppercase).count();
        let lower = seg.bytes().filter(u8::is_ascii_lowercase).count();
        let letters = upper + lower;
        digits > 0 || (upper >= 2 && lower >= 2 && upper * 4 >= letters && lower * 4 >= letters)
    })
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Marathon's own words.
impl From<&'static str> for Reason {
    fn from(text: &'static str) -> Reason {
        Reason::fixed(text)
    }
}

impl From<&Reason> for Reason {
    fn from(r: &Reason) -> Reason {
        r.clone()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Reason {}

impl std::hash::Hash for Reason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Reason {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Through [`Reason::reread`]: a file or an answer is untrusted text too.
impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Reason::reread(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    // Guards: error codes every provider sends stay readable.
    #[test]
    fn provider_error_codes_survive() {
        for code in [
            "rate_limit_error",
            "insufficient_quota",
            "usage_limit_reached",
            "overloaded_error",
            "invalid_api_key",
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXHAUSTED",
            "API_KEY_INVALID",
            "invalid_grant",
            "refresh_token_reused",
            "context_length_exceeded",
            "billing_hard_limit_reached",
            "userRateLimitExceeded",
            "unsupported_country_region_territory",
            "generativelanguage.googleapis.com",
            "http2_error",
            "v1:quota",
        ] {
            assert_eq!(
                Reason::untrusted(code).as_deref(),
                Some(code),
                "{code} was refused"
            );
        }
        assert_eq!(
            Reason::untrusted("  invalid_grant\n").unwrap(),
            "invalid_grant"
        );
    }

    // Guards: messages, keys and tokens never become a reason.
    #[test]
    fn prose_keys_and_tokens_are_refused() {
        for text in [
            "",
            "Incorrect API key provided",
            "rate limited; try again",
            "error\u{7}",
            "ünïcode",
            "a/b",
            &"x".repeat(MAX_WORD + 1),
            "sk-ant-api03-abcDEF123",
            "SK-PROJ-xyz",
            "sess-abcdefgh",
            "eyJhbGciOiJSUzI1NiJ9",
            "ya29.a0AfH6SMB",
            "AIzaSyD-9tSrke72PouQMnMX",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "github_pat_11ABC",
            "mk-access-5d1e8b7c",
            "0123456789abcdef",
            "token_aBcDeFgHiJkL",
            "correcthorsebatterystaplecorrect",
            "Bearer",
        ] {
            assert!(Reason::untrusted(text).is_none(), "{text:?} was kept");
        }
    }

    // Guards: a key-shaped secret that fits the vocabulary (a user's own
    // access key, a refresh token of plain words) is still refused, whole,
    // inside another word, or in part, because the process holds it.
    #[test]
    fn live_secrets_are_refused_even_when_word_shaped() {
        let word_shaped = "correct-horse-battery-staple";
        assert!(Reason::untrusted(word_shaped).is_some());
        let held = Secret::new(word_shaped);
        assert!(Reason::untrusted(word_shaped).is_none());
        assert!(Reason::untrusted("key_correct-horse-battery-staple").is_none());
        assert!(Reason::untrusted("horse-battery").is_none());
        assert_eq!(
            Reason::untrusted_or(word_shaped, Reason::http(401)),
            "http_401"
        );
        assert_eq!(Reason::reread(&format!("bad {word_shaped}")), "redacted");
        drop(held);
    }

    #[test]
    fn marathon_words_and_numbers() {
        assert_eq!(Reason::http(503), "http_503");
        assert_eq!(Reason::http(418), "http_418");
        let r: Reason = "stored state".into();
        assert_eq!(
            Reason::with_status(429, &"rate_limit_error".into()),
            "429 rate_limit_error"
        );
        assert_eq!(r.to_string(), "stored state");
        assert_eq!(format!("{:?}", Some(&r)), "Some(\"stored state\")");
        assert!(is_phrase(b"a b"));
        assert!(!is_phrase(b"a  b"));
        assert!(!is_phrase(b" a"));
        assert!(!is_phrase(b"a;b"));
    }

    #[test]
    fn serde_round_trips_and_rereads() {
        let r = Reason::with_status(429, &"rate_limit_error".into());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"429 rate_limit_error\"");
        let back: Reason = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let bad: Reason = serde_json::from_str("\"Incorrect key: sk-ant-abc\"").unwrap();
        assert_eq!(bad, Reason::REDACTED);
    }
}
