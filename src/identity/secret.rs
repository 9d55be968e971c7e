//! The random secrets behind sessions, CSRF tokens and API tokens. Only a
//! SHA-256 of a session id or token is stored: a database dump logs nobody in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of every API token, so secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "vmscan_";

/// 32 random bytes, base64url: a session id or CSRF token.
pub fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    B64URL.encode(bytes)
}

/// A new API token: `vmscan_` and 32 random bytes.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_id())
}

/// What the database keeps of a session id or token.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The key that lets a cluster pull one job's image without a login:
/// SHA-256 over the server's secret and the job id. (A length extension
/// would only yield keys for strings that are not job ids.)
pub fn image_key(server_secret: &str, job: &str) -> String {
    digest(&format!("{server_secret}:image:{job}"))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_stored_as_digests() {
        let t = new_token();
        assert!(t.starts_with("vmscan_") && t.len() == 7 + 43, "{t}");
        assert_ne!(t, new_token());
        assert_eq!(digest("abc").len(), 64);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac"));
    }
}
