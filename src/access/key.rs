//! API keys: `hh_` and 64 hex digits (32 random bytes from the OS-seeded CSPRNG).
//! The configuration holds only their SHA-256 hashes, compared in constant time.
//!
//! A fast hash is enough here: a password hash (argon2, bcrypt) is slow to make
//! guessing a *low-entropy* secret from its hash costly, but a 256-bit random key
//! cannot be guessed however fast the hash, so a leaked configuration file still
//! gives nobody a key.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every API key starts with; a bearer string without it is taken for a token.
pub const KEY_PREFIX: &str = "hh_";

/// A key's SHA-256, as the configuration holds it (64 lower-case hex digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of a key as a client presents it (the whole string, prefix included).
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Reads 64 hex digits, in any case.
    pub fn parse(hex: &str) -> Result<KeyHash, String> {
        let bad = || format!("`{hex}` is not a key hash (64 hex digits, as `hedgehog hash-key` prints)");
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
        }
        Ok(KeyHash(out))
    }

    /// Equal, in a time that does not depend on where the two first differ.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Not the hash itself: nothing secret, but logs have no use for it.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// A new random key and its hash.
pub fn new_key() -> (String, KeyHash) {
    let bytes: [u8; 32] = rand::random();
    let key = format!("{KEY_PREFIX}{}", KeyHash(bytes));
    let hash = KeyHash::of(&key);
    (key, hash)
}

/// What `hedgehog hash-key` prints: the key, its hash, and the entry to paste.
pub fn hash_key_text() -> String {
    let (key, hash) = new_key();
    format!(
        "key:  {key}\nhash: {hash}\n\n# Give the key to its holder, once; put only the hash in the config file:\n\
         [[keys]]\nprincipal = \"NAME\"\nclass = \"CLASS\"\nhash = \"{hash}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(KeyHash::of("abc").to_string(), abc);
        assert_eq!(KeyHash::parse(&abc.to_uppercase()), Ok(KeyHash::of("abc")));
    }

    #[test]
    fn new_keys_are_random_and_hash_to_what_is_printed() {
        let (a, ha) = new_key();
        let (b, _) = new_key();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 3 + 64 && a != b);
        assert!(KeyHash::of(&a).ct_eq(&ha));
        assert!(!KeyHash::of(&b).ct_eq(&ha));
        assert!(hash_key_text().contains("[[keys]]"));
    }

    #[test]
    fn hashes_must_be_64_hex_digits() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), &"é".repeat(32)] {
            assert!(KeyHash::parse(bad).unwrap_err().contains("is not a key hash"), "{bad}");
        }
        assert_eq!(format!("{:?}", KeyHash::of("x")), "KeyHash(..)");
    }
}
