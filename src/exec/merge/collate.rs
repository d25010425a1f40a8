//! Comparing text the way a shard does: bytewise for the C and POSIX collations, and through the
//! platform's C library (`strcoll_l`) for the other libc collations, with Postgres's tie-break.
//!
//! Postgres (libc provider, deterministic collation) compares two strings with `strcoll_l` in
//! the collation's locale and, when that says equal, with `strcmp`, so only identical strings are
//! equal. [`LibcCollator::compare`] does exactly that, in a locale loaded once per name.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

extern "C" {
    // POSIX.1-2008, in glibc; the libc crate does not declare it for Linux.
    fn strcoll_l(s1: *const c_char, s2: *const c_char, locale: libc::locale_t) -> c_int;
}

/// Why a locale could not be used for comparing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollateError {
    /// `newlocale` refused the name: the locale is not installed where the proxy runs.
    #[error("locale \"{0}\" is not installed where pgshard runs")]
    NotInstalled(String),
    /// The name cannot be passed to the C library (it contains a NUL byte).
    #[error("locale name {0:?} is not valid")]
    BadName(String),
}

/// A loaded libc locale (`LC_COLLATE` and `LC_CTYPE`), freed when dropped.
pub struct LibcCollator {
    locale: libc::locale_t,
    collate: String,
    ctype: String,
}

// SAFETY: a `locale_t` is an opaque object that nothing mutates after `newlocale` returned it;
// glibc documents `strcoll_l` as MT-Safe because it reads only the locale it is given. The one
// call that changes the object, `freelocale`, happens in `Drop`, which runs when no other
// reference to this value exists. So sharing and sending the handle between threads is sound.
unsafe impl Send for LibcCollator {}
// SAFETY: see `Send` above: every method takes `&self` and only reads the locale.
unsafe impl Sync for LibcCollator {}

impl Drop for LibcCollator {
    fn drop(&mut self) {
        // SAFETY: `locale` came from a successful `newlocale` and is freed exactly once, here.
        unsafe { libc::freelocale(self.locale) };
    }
}

impl std::fmt::Debug for LibcCollator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibcCollator")
            .field("collate", &self.collate)
            .field("ctype", &self.ctype)
            .finish()
    }
}

impl LibcCollator {
    /// Loads `collate` for LC_COLLATE and `ctype` for LC_CTYPE, as Postgres does for a database
    /// or a libc collation.
    pub fn new(collate: &str, ctype: &str) -> Result<LibcCollator, CollateError> {
        let c_collate =
            CString::new(collate).map_err(|_| CollateError::BadName(collate.to_string()))?;
        let c_ctype = CString::new(ctype).map_err(|_| CollateError::BadName(ctype.to_string()))?;
        // SAFETY: the name is a valid NUL-terminated string that outlives the call; a null base
        // asks for a new locale object (the other categories are those of "C").
        let base = unsafe {
            libc::newlocale(
                libc::LC_COLLATE_MASK,
                c_collate.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if base.is_null() {
            return Err(CollateError::NotInstalled(collate.to_string()));
        }
        // SAFETY: as above; `base` is a valid locale object which `newlocale` either reuses for
        // its result or leaves untouched when it fails.
        let locale = unsafe { libc::newlocale(libc::LC_CTYPE_MASK, c_ctype.as_ptr(), base) };
        if locale.is_null() {
            // SAFETY: `base` is still ours after the failed call and is freed once.
            unsafe { libc::freelocale(base) };
            return Err(CollateError::NotInstalled(ctype.to_string()));
        }
        Ok(LibcCollator {
            locale,
            collate: collate.to_string(),
            ctype: ctype.to_string(),
        })
    }

    /// The LC_COLLATE name this was loaded with.
    pub fn collate(&self) -> &str {
        &self.collate
    }

    /// The LC_CTYPE name this was loaded with.
    pub fn ctype(&self) -> &str {
        &self.ctype
    }

    /// Postgres's `varstr_cmp` for a deterministic libc collation: identical bytes are equal,
    /// otherwise `strcoll_l`, and `strcmp` when that says equal. A NUL byte (which Postgres text
    /// never contains) ends the string for `strcoll_l`; the tie-break still sees every byte.
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Ordering {
        if a == b {
            return Ordering::Equal;
        }
        let r = with_c_string(a, |pa| {
            with_c_string(b, |pb| {
                // SAFETY: both pointers are NUL-terminated buffers alive for this call, and
                // `self.locale` is a valid locale object (see the `Send` note).
                unsafe { strcoll_l(pa, pb, self.locale) }
            })
        });
        match r.cmp(&0) {
            Ordering::Equal => a.cmp(b),
            o => o,
        }
    }
}

/// Calls `f` with `s` (up to its first NUL) as a NUL-terminated C string, on the stack when short.
fn with_c_string<R>(s: &[u8], f: impl FnOnce(*const c_char) -> R) -> R {
    const STACK: usize = 256;
    let s = match s.iter().position(|b| *b == 0) {
        Some(end) => &s[..end],
        None => s,
    };
    if s.len() < STACK {
        let mut buf = [0u8; STACK];
        buf[..s.len()].copy_from_slice(s);
        f(buf.as_ptr().cast())
    } else {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s);
        v.push(0);
        f(v.as_ptr().cast())
    }
}

/// Loaded collators by (LC_COLLATE, LC_CTYPE) name.
type Loaded = Mutex<HashMap<(String, String), Arc<LibcCollator>>>;

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The collator of `collate`/`ctype`, loaded on first use and then shared. Failures are not
/// remembered, so installing the locale takes effect without a restart.
pub fn libc_collator(collate: &str, ctype: &str) -> Result<Arc<LibcCollator>, CollateError> {
    let key = (collate.to_string(), ctype.to_string());
    if let Ok(map) = loaded().lock() {
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
    }
    let c = Arc::new(LibcCollator::new(collate, ctype)?);
    if let Ok(mut map) = loaded().lock() {
        return Ok(map.entry(key).or_insert(c).clone());
    }
    Ok(c)
}

/// The version Postgres records for a libc collation on this platform (glibc's version), or
/// `None` where the C library is not glibc and its collations cannot be assumed to match.
pub fn platform_version() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: glibc returns a pointer to a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
        Some(v.to_string_lossy().into_owned())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// True for the locale names Postgres compares bytewise (`lc_collate_is_c`).
pub fn is_c_locale(name: &str) -> bool {
    name == "C" || name == "POSIX"
}

/// How the merge compares text values of one column.
#[derive(Debug, Clone, Default)]
pub enum TextOrder {
    /// Byte order: the C and POSIX collations (and the `name` type's default).
    #[default]
    Bytewise,
    /// A libc locale's order with the bytewise tie-break.
    Libc(Arc<LibcCollator>),
}

impl TextOrder {
    /// Compares two text values.
    #[inline]
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            TextOrder::Bytewise => a.cmp(b),
            TextOrder::Libc(c) => c.compare(a, b),
        }
    }

    /// True when this order is the one of a libc collation with these names (C/POSIX: bytewise).
    pub fn is_libc(&self, collate: &str, ctype: &str) -> bool {
        match self {
            TextOrder::Bytewise => is_c_locale(collate),
            TextOrder::Libc(c) => c.collate == collate && c.ctype == ctype,
        }
    }

    /// A name for messages.
    pub fn describe(&self) -> String {
        match self {
            TextOrder::Bytewise => "\"C\"".into(),
            TextOrder::Libc(c) => format!("\"{}\"", c.collate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT v FROM s ORDER BY v` in a Postgres 15 database created with
    /// `--locale=en_US.UTF-8` (glibc 2.36). Covers case, accents, punctuation, spaces, digits,
    /// ligatures, and code points glibc does not know (which strcoll calls equal, so the order
    /// among them is strcmp's: `x\u{560}` < `x\u{588}` < `x\u{5ef}`).
    const EN_US_ORDER: &[&str] = &[
        "",
        " ",
        "#",
        "@",
        "~",
        "1",
        "10",
        "9",
        "!a",
        "a",
        "A",
        "\u{e5}",
        "\u{c5}",
        "a1",
        "a10",
        "a2",
        "a\u{ad}b",
        "a\u{200b}b",
        "a b",
        "a-b",
        "a_b",
        "ab",
        "ab\u{200b}",
        "ab ",
        "aB",
        "Ab",
        "apfel",
        "Apfel",
        "\u{c4}pfel",
        "b",
        "B",
        "co op",
        "co-op",
        "coop",
        "Co-op",
        "d\u{17e}",
        "\u{1c5}",
        "e",
        "E",
        "\u{e9}",
        "f",
        "fi",
        "\u{fb01}",
        "n",
        "\u{f1}",
        "o",
        "oe",
        "\u{153}",
        "resume",
        "Resume",
        "r\u{e9}sum\u{e9}",
        "r\u{e8}sum\u{e9}",
        "ss",
        "SS",
        "\u{df}",
        "strasse",
        "stra\u{df}e",
        "x",
        "x\u{560}",
        "x\u{588}",
        "x\u{5ef}",
        "X",
        "X\u{560}",
        "x\u{560}a",
        "x,y",
        "x.y",
        "xy",
        "z",
        "zebra",
        "Zebra",
        "\u{4e2d}\u{6587}",
        "\u{65e5}\u{672c}",
    ];

    /// scripts/install-deps.sh generates the locale; without it these tests fail, saying so.
    fn en_us() -> Arc<LibcCollator> {
        libc_collator("en_US.UTF-8", "en_US.UTF-8")
            .unwrap_or_else(|e| panic!("{e}: run scripts/install-deps.sh"))
    }

    #[test]
    fn en_us_orders_like_postgres() {
        let c = en_us();
        let order = TextOrder::Libc(c.clone());
        let mut shuffled: Vec<&str> = EN_US_ORDER.to_vec();
        shuffled.reverse();
        shuffled.rotate_left(17);
        shuffled.sort_by(|a, b| order.compare(a.as_bytes(), b.as_bytes()));
        assert_eq!(shuffled, EN_US_ORDER);
        // Every pair, both ways: a total order consistent with the list.
        for (i, a) in EN_US_ORDER.iter().enumerate() {
            for (j, b) in EN_US_ORDER.iter().enumerate() {
                assert_eq!(
                    c.compare(a.as_bytes(), b.as_bytes()),
                    i.cmp(&j),
                    "{a:?} {b:?}"
                );
            }
        }
        // The C order of the same strings is different (so the test can fail).
        let mut bytewise: Vec<&str> = EN_US_ORDER.to_vec();
        bytewise.sort_by(|a, b| TextOrder::Bytewise.compare(a.as_bytes(), b.as_bytes()));
        assert_ne!(bytewise, EN_US_ORDER);
    }

    #[test]
    fn strcoll_ties_fall_back_to_bytes() {
        let c = en_us();
        let (a, b) = ("x\u{560}".as_bytes(), "x\u{588}".as_bytes());
        let ca = CString::new(a).unwrap();
        let cb = CString::new(b).unwrap();
        // SAFETY: valid C strings and a live locale.
        let raw = unsafe { strcoll_l(ca.as_ptr(), cb.as_ptr(), c.locale) };
        assert_eq!(raw, 0, "glibc calls these equal");
        assert_eq!(c.compare(a, b), Ordering::Less);
        assert_eq!(c.compare(b, a), Ordering::Greater);
    }

    #[test]
    fn long_strings_and_nul_bytes() {
        let c = en_us();
        let long_a = format!("{}a", "x".repeat(1000));
        let long_b = format!("{}B", "x".repeat(1000));
        assert_eq!(
            c.compare(long_a.as_bytes(), long_b.as_bytes()),
            Ordering::Less
        );
        assert_eq!(TextOrder::Bytewise.compare(b"xa", b"xB"), Ordering::Greater);
        // Never panics; NUL ends the string for strcoll, bytes break the tie.
        assert_eq!(c.compare(b"a\0b", b"a\0c"), Ordering::Less);
        assert_eq!(c.compare(b"a\0b", b"a"), Ordering::Greater);
    }

    #[test]
    fn missing_locales_are_named() {
        assert_eq!(
            LibcCollator::new("xx_NOPE.UTF-8", "xx_NOPE.UTF-8").err(),
            Some(CollateError::NotInstalled("xx_NOPE.UTF-8".into()))
        );
        assert!(matches!(
            LibcCollator::new("a\0b", "C"),
            Err(CollateError::BadName(_))
        ));
        let a = libc_collator("C", "C").unwrap();
        let b = libc_collator("C", "C").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "loaded once per name");
    }

    #[test]
    fn names_and_versions() {
        assert!(is_c_locale("C") && is_c_locale("POSIX") && !is_c_locale("C.UTF-8"));
        assert!(TextOrder::Bytewise.is_libc("POSIX", "whatever"));
        let c = en_us();
        assert!(TextOrder::Libc(c.clone()).is_libc("en_US.UTF-8", "en_US.UTF-8"));
        assert!(!TextOrder::Libc(c).is_libc("en_US.utf8", "en_US.UTF-8"));
        let v = platform_version().unwrap();
        assert!(v.starts_with("2."), "{v}");
    }
}
