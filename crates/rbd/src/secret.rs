//! [`Secret`]: a cephx key or an encryption passphrase, held in memory only.
//! Its `Debug` and `Display` print `<redacted>`, it is not `Clone`-by-accident
//! into logs (cloning is explicit), and its bytes (and those of every clone)
//! are zeroed when dropped, by the `zeroize` crate, whose writes the compiler
//! cannot optimise away.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A cephx key (the base64 string from a keyring's `key = ...` line) or an
/// encryption passphrase (taken byte for byte: never trimmed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(key: impl Into<String>) -> Self {
        Secret(Zeroizing::new(key.into()))
    }

    /// The secret itself. Only for handing it to librados/librbd or down a
    /// pipe; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Empty or only whitespace.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Zeroes a buffer that held secret material before freeing it (e.g. the
/// `CString` a secret was copied into for a C call).
pub(crate) fn wipe(mut bytes: Vec<u8>) {
    bytes.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_key() {
        let s = Secret::new("AQBkey==");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "AQBkey==");
        // Passphrases are kept byte for byte.
        assert_eq!(Secret::new(" pass phrase\n").expose(), " pass phrase\n");
        assert!(Secret::new(" \n").is_empty());
    }
}
