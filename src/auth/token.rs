//! Tokens: `fdt_<user id>_<secret>`, the secret 32 random bytes in unpadded base64url (43
//! characters). The user id makes a check one map lookup; only the SHA-256 of the secret is
//! kept, and it is compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Error;

/// What every token starts with.
pub const PREFIX: &str = "fdt_";
/// How many random bytes a token's secret holds (256 bits).
pub const SECRET_BYTES: usize = 32;
/// The length of the secret as text.
const SECRET_CHARS: usize = 43;

/// A token as a request presented it: the user it names and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The user id the token names.
    pub user: u32,
    /// SHA-256 of the secret bytes.
    pub secret_sha256: [u8; 32],
}

/// A new token for `user`: its text (shown once) and the hash to store.
pub fn generate(user: u32) -> Result<(String, [u8; 32]), Error> {
    let (secret, hash) = new_secret()?;
    Ok((text(user, &secret), hash))
}

/// A new secret as text, and its hash (for a user whose id is not known yet).
pub fn new_secret() -> Result<(String, [u8; 32]), Error> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| Error::Random(e.to_string()))?;
    Ok((
        URL_SAFE_NO_PAD.encode(secret),
        Sha256::digest(secret).into(),
    ))
}

/// The token of `user` with the secret `secret` (as [`new_secret`] gave it).
pub fn text(user: u32, secret: &str) -> String {
    format!("{PREFIX}{user}_{secret}")
}

/// Reads a token's text; `None` when it does not have the shape of a token.
pub fn parse(text: &str) -> Option<Presented> {
    let rest = text.strip_prefix(PREFIX)?;
    // The id is digits only; the secret may itself contain `_`.
    let (id, secret) = rest.split_once('_')?;
    if id.is_empty() || id.len() > 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if secret.len() != SECRET_CHARS {
        return None;
    }
    let user = id.parse().ok()?;
    let mut bytes = [0u8; SECRET_BYTES];
    let n = URL_SAFE_NO_PAD
        .decode_slice(secret.as_bytes(), &mut bytes)
        .ok()?;
    (n == SECRET_BYTES).then(|| Presented {
        user,
        secret_sha256: Sha256::digest(bytes).into(),
    })
}

/// Whether a presented secret's hash is the stored one, in time that does not depend on where
/// they differ.
pub fn matches(presented: &[u8; 32], stored: &[u8; 32]) -> bool {
    presented.ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_back_to_its_user_and_hash() {
        let (text, hash) = generate(42).expect("random bytes");
        assert!(text.starts_with("fdt_42_"), "{text}");
        assert_eq!(text.len(), "fdt_42_".len() + SECRET_CHARS);
        let presented = parse(&text).expect("a token");
        assert_eq!(presented.user, 42);
        assert!(matches(&presented.secret_sha256, &hash));
    }

    #[test]
    fn two_tokens_are_never_the_same() {
        let (a, ha) = generate(1).expect("random");
        let (b, hb) = generate(1).expect("random");
        assert_ne!(a, b);
        assert!(!matches(&ha, &hb));
    }

    #[test]
    fn text_that_is_not_a_token_is_refused() {
        let (good, _) = generate(7).expect("random");
        let secret = &good["fdt_7_".len()..];
        for bad in [
            String::new(),
            "fdt_".into(),
            format!("fdt__{secret}"),
            format!("fdt_x_{secret}"),
            format!("fdt_-7_{secret}"),
            format!("fdt_99999999999_{secret}"),
            format!("xyz_7_{secret}"),
            format!("fdt_7_{}", &secret[1..]),
            format!("fdt_7_{secret}A"),
            format!("fdt_7_{}", "!".repeat(SECRET_CHARS)),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_secret_with_underscores_keeps_them() {
        let secret = URL_SAFE_NO_PAD.encode([0xff; SECRET_BYTES]);
        assert!(secret.contains('_'));
        let presented = parse(&format!("fdt_3_{secret}")).expect("a token");
        assert_eq!(presented.user, 3);
        let expected: [u8; 32] = Sha256::digest([0xff; SECRET_BYTES]).into();
        assert!(matches(&presented.secret_sha256, &expected));
    }
}
