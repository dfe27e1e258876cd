//! Secret values (API keys, access and refresh tokens), and the list of the
//! ones this process holds.
//!
//! A [`Secret`] never prints its contents: `Debug` and `Display` both render
//! `Secret([redacted])`, so a secret that slips into a log line, an event, an
//! error message or a panic stays hidden. Reading the value takes an explicit
//! call to [`Secret::expose`], which is easy to grep for in review.
//!
//! There is deliberately no `PartialEq`: comparing secrets should be rare and
//! explicit ([`Secret::same_as`]), not something `==` does by accident.
//!
//! # Known secrets
//!
//! Redacting a `Secret` is not enough when someone else hands the value back:
//! an upstream or a token endpoint that echoes the key it received puts it in
//! text marathon reads (an error code, a header, a stream event). So every
//! `Secret` registers itself, when it is created, in a process-wide list of
//! live secrets, and [`scrubber`] gives a matcher over that list:
//! [`crate::reason::Reason::untrusted`] refuses any word that holds or is part
//! of a live secret, and the proxy masks live secrets in everything it sends
//! a client.
//!
//! Why a registry fed by the constructor rather than a set each caller builds
//! and hands in: every credential marathon holds is a `Secret` (an
//! architecture invariant), so the list is complete by construction — the
//! account loaded from the store a second ago, the access token a refresh
//! returned before the next store sync, the proxy's access keys — and nobody
//! can forget to add one. The list holds weak references only: a secret that
//! is dropped leaves it, so the list is bounded by what is alive, and it keeps
//! no dead credential alive. Core still does no I/O: this is memory.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use aho_corasick::{AhoCorasick, MatchKind};

/// A string that must never be shown: an API key, an access token, a refresh token.
///
/// Cloning shares the value (and its place in the known-secrets list).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value, and adds it to the process's known secrets.
    pub fn new(value: impl Into<String>) -> Self {
        let value: Arc<str> = Arc::from(value.into());
        register(&value);
        Secret(value)
    }

    /// The raw value. Call this only where the value leaves for its owner
    /// (an upstream request header, the store file, a token endpoint).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether two secrets hold the same value (e.g. "did another process
    /// already rotate this refresh token?"). Constant-time in the common length.
    pub fn same_as(&self, other: &Secret) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }

    /// Whether `candidate` (say, a key a client presented) is this secret's
    /// value. Constant-time in the common length; `candidate` is not wrapped
    /// in a `Secret`, so a stranger's guess does not join the known secrets.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL as it may be shown (banner, status, error message): a user name or
/// password before the host (`https://user:pw@host`) and the query string
/// (`?key=...`) are replaced by `[redacted]`, the fragment is dropped.
/// Config refuses such URLs where it can; this keeps one that slipped
/// through (or a mistyped one quoted in an error) from printing a credential.
pub fn redact_url(url: &str) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let (url, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?[redacted]"),
        None => (url, ""),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("[redacted]@{host}"),
        None => authority.to_owned(),
    };
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{scheme}{authority}{path}{query}")
}

/// Transparent: the store writes the value itself.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Through [`Secret::new`], so a secret read from a file is known too.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

// ---------------------------------------------------------------------------
// The known secrets
// ---------------------------------------------------------------------------

/// Secrets shorter than this are neither masked nor matched: masking a
/// four-letter "key" would blank every occurrence of an ordinary word, and a
/// credential that short protects nothing anyway.
pub const MIN_MATCHED_LEN: usize = 8;

struct Registry {
    live: Vec<Weak<str>>,
    /// Dead entries are dropped when `live` grows to this length, so the
    /// list stays within twice the number of live secrets.
    prune_at: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    prune_at: 64,
});

/// Bumped after every registration; a [`Scrubber`] built at an older
/// version may miss a secret.
static VERSION: AtomicU64 = AtomicU64::new(0);

/// The last scrubber built, shared by every thread.
static LATEST: Mutex<Option<(u64, Arc<Scrubber>)>> = Mutex::new(None);

thread_local! {
    /// This thread's copy of [`LATEST`]: the hot path (a response passing
    /// through the proxy) reads an atomic and clones an `Arc`, no lock.
    static CACHED: std::cell::RefCell<Option<(u64, Arc<Scrubber>)>> =
        const { std::cell::RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(value: &Arc<str>) {
    if value.len() < MIN_MATCHED_LEN {
        return;
    }
    {
        let mut r = lock(&REGISTRY);
        if r.live.len() >= r.prune_at {
            r.live.retain(|w| w.strong_count() > 0);
            r.prune_at = (r.live.len() * 2).max(64);
        }
        r.live.push(Arc::downgrade(value));
    }
    // After the push: whoever reads the new version sees the new entry.
    VERSION.fetch_add(1, Ordering::Release);
}

/// A matcher over every live [`Secret`] of this process (those of at least
/// [`MIN_MATCHED_LEN`] bytes), current as of the call.
pub fn scrubber() -> Arc<Scrubber> {
    let version = VERSION.load(Ordering::Acquire);
    let hit = CACHED.with(|c| match &*c.borrow() {
        Some((v, s)) if *v == version => Some(s.clone()),
        _ => None,
    });
    if let Some(s) = hit {
        return s;
    }
    let fresh = {
        let mut latest = lock(&LATEST);
        match &*latest {
            Some((v, s)) if *v == version => s.clone(),
            previous => {
                let values = live_values();
                let s = match previous {
                    // Re-reading the store re-registers the same values:
                    // keep the matcher already built for them.
                    Some((_, s)) if s.secrets == values => s.clone(),
                    _ => Arc::new(Scrubber::new(values)),
                };
                *latest = Some((version, s.clone()));
                s
            }
        }
    };
    CACHED.with(|c| *c.borrow_mut() = Some((version, fresh.clone())));
    fresh
}

fn live_values() -> Vec<Box<str>> {
    let r = lock(&REGISTRY);
    let mut values: Vec<Box<str>> = r
        .live
        .iter()
        .filter_map(Weak::upgrade)
        .map(|v| Box::from(&*v))
        .collect();
    drop(r);
    values.sort_unstable();
    values.dedup();
    values
}

/// Secrets at least this long share one window filter, sampled sparsely;
/// shorter ones (rare: credentials are long) have their own, sampled more
/// often, so one short secret does not make every search slow.
const LONG: usize = 16;

/// Finds and masks known secrets in text. Built by [`scrubber`].
///
/// Every answer the proxy sends a client is searched, so the common case —
/// no secret anywhere — must cost little. A sampled-window filter
/// ([`WindowFilter`]) answers it first, with no false negatives; a hit, rare
/// for ordinary text, is confirmed by the exact matcher.
pub struct Scrubber {
    /// Sorted, without duplicates.
    secrets: Vec<Box<str>>,
    /// `None` when there is nothing to find.
    matcher: Option<AhoCorasick>,
    /// Over secrets of [`LONG`] bytes or more, and over the shorter ones.
    filters: [WindowFilter; 2],
    longest: usize,
    /// The length of the shortest secret; `usize::MAX` when there is none,
    /// so no text is long enough.
    shortest: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// Every 4-byte window of every secret (ASCII case folded) sets two bits in
/// a bitset (a Bloom filter). A text is sampled every `shortest - 3` bytes:
/// any secret occurring in it spans at least that many window starts, so at
/// least one sampled window is one of its windows and has both bits set. A
/// text with no such sample holds no secret.
struct WindowFilter {
    bits: Box<[u64]>,
    /// `64 - log2(bit count)`: the hashes' shift.
    shift: u32,
    /// The shortest secret in the filter (0: empty filter).
    shortest: usize,
}

impl WindowFilter {
    fn new(secrets: &[&[u8]]) -> WindowFilter {
        let shortest = secrets.iter().map(|s| s.len()).min().unwrap_or(0);
        // 64 bits per window, two set each: about one sample in a thousand
        // of ordinary text passes; 256 KiB at most.
        let windows: usize = secrets.iter().map(|s| s.len() - 3).sum();
        let count = (windows * 64).next_power_of_two().clamp(1 << 12, 1 << 21);
        let mut filter = WindowFilter {
            bits: vec![0u64; count / 64].into_boxed_slice(),
            shift: 64 - count.trailing_zeros(),
            shortest,
        };
        for s in secrets {
            for at in 0..=s.len() - 4 {
                for bit in filter.window_bits(s, at) {
                    filter.bits[bit / 64] |= 1 << (bit % 64);
                }
            }
        }
        filter
    }

    /// The two bits of the window at `at`, ASCII case folded (and,
    /// harmlessly, a few punctuation bytes with it: folding only adds
    /// collisions).
    fn window_bits(&self, text: &[u8], at: usize) -> [usize; 2] {
        let w = u32::from_le_bytes([text[at], text[at + 1], text[at + 2], text[at + 3]]);
        let w = u64::from(w | 0x2020_2020);
        [
            (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize,
            (w.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> self.shift) as usize,
        ]
    }

    /// Whether `text` may hold one of the secrets: false means it holds none.
    fn may_hold(&self, text: &[u8]) -> bool {
        if self.shortest == 0 || text.len() < self.shortest {
            return false;
        }
        let stride = self.shortest - 3;
        let last = text.len() - 4;
        let set = |bit: usize| self.bits[bit / 64] & (1 << (bit % 64)) != 0;
        let mut at = 0;
        loop {
            let [a, b] = self.window_bits(text, at);
            if set(a) && set(b) {
                return true;
            }
            if at == last {
                return false;
            }
            at = (at + stride).min(last);
        }
    }
}

impl Scrubber {
    fn new(secrets: Vec<Box<str>>) -> Scrubber {
        // Standard semantics: overlapping matches are all found, so masking
        // covers a secret that overlaps another. ASCII case is ignored: a
        // header name echoing a key arrives lower-cased, and random keys
        // do not collide with text by case alone.
        let matcher = (!secrets.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .ascii_case_insensitive(true)
                    .build(secrets.iter().map(|s| s.as_bytes()))
                    .ok()
            })
            .flatten();
        let longest = secrets.iter().map(|s| s.len()).max().unwrap_or(0);
        let shortest = match &matcher {
            Some(_) => secrets.iter().map(|s| s.len()).min().unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let (long, short): (Vec<&[u8]>, Vec<&[u8]>) = secrets
            .iter()
            .map(|s| s.as_bytes())
            .partition(|s| s.len() >= LONG);
        let filters = [WindowFilter::new(&long), WindowFilter::new(&short)];
        Scrubber {
            secrets,
            matcher,
            filters,
            longest,
            shortest,
        }
    }

    /// Whether `text` may hold a secret: false means it holds none.
    fn may_hold(&self, text: &[u8]) -> bool {
        self.matcher.is_some() && self.filters.iter().any(|f| f.may_hold(text))
    }

    /// A scrubber over exactly these values (for tests of code that takes a
    /// scrubber); values shorter than [`MIN_MATCHED_LEN`] are left out.
    pub fn of(values: &[&str]) -> Scrubber {
        let mut secrets: Vec<Box<str>> = values
            .iter()
            .filter(|v| v.len() >= MIN_MATCHED_LEN)
            .map(|v| Box::from(*v))
            .collect();
        secrets.sort_unstable();
        secrets.dedup();
        Scrubber::new(secrets)
    }

    /// Whether there is no secret to look for.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The length of the longest secret: a secret split between two chunks
    /// of a stream starts within this many bytes of the first chunk's end.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Whether `text` holds a secret (ignoring ASCII case).
    #[inline]
    pub fn finds(&self, text: &[u8]) -> bool {
        // Inline, so the common case of a short text (most header names and
        // values next to keys of 40 bytes and more) costs one comparison.
        text.len() >= self.shortest && self.finds_in(text)
    }

    fn finds_in(&self, text: &[u8]) -> bool {
        self.may_hold(text) && self.matcher.as_ref().is_some_and(|m| m.is_match(text))
    }

    /// Overwrites every secret in `buf` (ignoring ASCII case) with `*` (same
    /// length, so a `content-length` stays true). Returns whether anything
    /// was masked.
    pub fn mask(&self, buf: &mut [u8]) -> bool {
        let Some(m) = self.matcher.as_ref().filter(|_| self.may_hold(buf)) else {
            return false;
        };
        let mut ranges = Vec::new();
        for found in m.find_overlapping_iter(&*buf) {
            ranges.push(found.range());
        }
        for r in &ranges {
            buf[r.clone()].fill(b'*');
        }
        !ranges.is_empty()
    }

    /// Whether `word` holds a secret, or is a piece (of at least
    /// [`MIN_MATCHED_LEN`] bytes) of one: an echo of half a key is still
    /// not a reason to show anyone.
    pub fn mentions(&self, word: &str) -> bool {
        self.finds(word.as_bytes())
            || (word.len() >= MIN_MATCHED_LEN && self.secrets.iter().any(|s| s.contains(word)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk-ant-very-secret");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret([redacted]))");
        assert_eq!(s.expose(), "sk-ant-very-secret");
    }

    #[test]
    fn same_as_compares_values() {
        assert!(Secret::new("a").same_as(&Secret::new("a")));
        assert!(!Secret::new("a").same_as(&Secret::new("b")));
        assert!(!Secret::new("a").same_as(&Secret::new("ab")));
        assert!(Secret::new("ab").matches("ab"));
        assert!(!Secret::new("ab").matches("abc"));
    }

    #[test]
    fn serializes_transparently_for_the_store() {
        let s = Secret::new("tok");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"tok\"");
        let back: Secret = serde_json::from_str("\"tok\"").unwrap();
        assert!(back.same_as(&s));
    }

    // Guards: a secret created anywhere (here: read from JSON, as the store
    // does) is known at once, and a dropped one is forgotten.
    #[test]
    fn live_secrets_are_known_and_dropped_ones_forgotten() {
        let value = "live-secret-registry-test-7f3a";
        assert!(!scrubber().finds(value.as_bytes()));
        let s: Secret = serde_json::from_str(&format!("\"{value}\"")).unwrap();
        let text = format!("error: {value}!");
        assert!(scrubber().finds(text.as_bytes()));
        let clone = s.clone();
        drop(s);
        assert!(scrubber().finds(text.as_bytes()), "a clone keeps it alive");
        drop(clone);
        // Another registration makes the scrubber rebuild from live values.
        let _other = Secret::new("another-live-secret-1c9e");
        assert!(!scrubber().finds(text.as_bytes()));
    }

    // Guards the window filter: whatever the secret's position, case and
    // surroundings, and however short the text around it, it is found.
    #[test]
    fn finds_a_secret_at_every_offset_and_case() {
        let secrets = [
            "sk-ant-api03-Zq81xYw0aaBcDeFg",
            "eight-ch",
            "0123456789abcdef0123",
            "sixteen-chars-ab",
        ];
        let sc = Scrubber::of(&secrets);
        for secret in secrets {
            for pad in 0..40 {
                for variant in [secret.to_owned(), secret.to_ascii_uppercase()] {
                    let text = format!("{}{variant}{}", "x".repeat(pad), "y".repeat(pad % 7));
                    assert!(sc.finds(text.as_bytes()), "{text}");
                    let mut buf = text.clone().into_bytes();
                    assert!(sc.mask(&mut buf));
                    assert!(!String::from_utf8(buf).unwrap().contains(&variant));
                }
            }
            assert!(!sc.finds(&secret.as_bytes()[1..]));
        }
        assert!(!sc.finds(b"an ordinary answer with no key in it at all, of some length"));
    }

    #[test]
    fn masks_every_occurrence_in_place() {
        let sc = Scrubber::of(&["sk-abcdefgh", "abcdefgh-tail", "short"]);
        let mut buf = b"x sk-abcdefgh-tail y sk-abcdefgh short".to_vec();
        assert!(sc.mask(&mut buf));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("x {} y {} short", "*".repeat(16), "*".repeat(11))
        );
        assert!(!sc.mask(&mut b"nothing here".to_vec()));
        assert!(sc.mentions("sk-abcdefgh"));
        assert!(sc.mentions("prefix_sk-abcdefgh"));
        assert!(sc.mentions("abcdefgh-ta"), "a piece of a secret");
        assert!(
            !sc.mentions("abcdefg"),
            "too short a piece to mean anything"
        );
        assert!(!sc.mentions("short"), "too short a secret to look for");
        assert_eq!(sc.longest(), 13);
        assert!(Scrubber::of(&[]).is_empty());
    }

    #[test]
    fn redact_url_hides_userinfo_and_query() {
        assert_eq!(
            redact_url("https://user:hunter2@api.example.com:8443/v1"),
            "https://[redacted]@api.example.com:8443/v1"
        );
        assert_eq!(
            redact_url("https://hooks.example.com/x?token=hunter2#frag"),
            "https://hooks.example.com/x?[redacted]"
        );
        // An '@' in the path is not userinfo; one in the authority is, even
        // without a scheme (a mistyped URL quoted in an error).
        assert_eq!(
            redact_url("https://example.com/users/@me"),
            "https://example.com/users/@me"
        );
        assert_eq!(redact_url("user:hunter2@host/x"), "[redacted]@host/x");
        assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
    }
}
