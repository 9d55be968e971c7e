//! Password hashing for local users: Argon2id (RFC 9106), stored as a PHC
//! string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) so the parameters can
//! change later without breaking stored hashes.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;

/// OWASP's first Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
const M_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_LANES: u32 = 1;
const OUT_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the stored password hash is not an argon2id PHC string")]
    Malformed,
    #[error("argon2: {0}")]
    Argon(String),
}

fn argon(m: u32, t: u32, p: u32) -> Result<Argon2<'static>, PasswordError> {
    let params =
        Params::new(m, t, p, Some(OUT_LEN)).map_err(|e| PasswordError::Argon(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password with a fresh random salt. CPU-heavy (~20 ms): call it
/// from `spawn_blocking` on a server.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; OUT_LEN];
    argon(M_KIB, T_COST, P_LANES)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| PasswordError::Argon(e.to_string()))?;
    Ok(format!(
        "$argon2id$v=19$m={M_KIB},t={T_COST},p={P_LANES}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Whether `password` matches the stored PHC string (constant-time compare).
pub fn verify(password: &str, phc: &str) -> Result<bool, PasswordError> {
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", params, salt, want] = parts.as_slice() else {
        return Err(PasswordError::Malformed);
    };
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for kv in params.split(',') {
        let (k, v) = kv.split_once('=').ok_or(PasswordError::Malformed)?;
        let v: u32 = v.parse().map_err(|_| PasswordError::Malformed)?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return Err(PasswordError::Malformed),
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err(PasswordError::Malformed);
    };
    let salt = B64.decode(salt).map_err(|_| PasswordError::Malformed)?;
    let want = B64.decode(want).map_err(|_| PasswordError::Malformed)?;
    if want.is_empty() || want.len() > 64 {
        return Err(PasswordError::Malformed);
    }
    let mut got = vec![0u8; want.len()];
    let params =
        Params::new(m, t, p, Some(want.len())).map_err(|e| PasswordError::Argon(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), &salt, &mut got)
        .map_err(|e| PasswordError::Argon(e.to_string()))?;
    Ok(super::secret::constant_time_eq(&got, &want))
}

/// A password for a generated account (the first admin): 24 characters
/// from an alphabet without look-alikes, about 137 bits.
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let n = ALPHABET.len();
    // Rejection sampling keeps every character equally likely.
    let limit = (256 / n * n) as u8;
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let b: u8 = rand::random();
        if b < limit {
            out.push(ALPHABET[b as usize % n] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("correct horsf", &h).unwrap());
        assert_ne!(h, hash("correct horse").unwrap(), "salts differ");
        assert_eq!(verify("x", "plain"), Err(PasswordError::Malformed));
    }

    #[test]
    fn verifies_a_hash_made_by_another_implementation() {
        // argon2-cffi 23 (the reference C code): low_level.hash_secret(b"hunter2",
        // b"somesaltsomesalt", time_cost=2, memory_cost=19456, parallelism=1,
        // hash_len=32, type=Type.ID).
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$leF08Fu/gOi7XGf5NvDjbfR9GY+siUuPd+cKkq57H/c";
        assert!(verify("hunter2", phc).unwrap());
        assert!(!verify("hunter3", phc).unwrap());
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate();
        assert_eq!(a.len(), 24);
        assert_ne!(a, generate());
    }
}
