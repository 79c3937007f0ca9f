//! How a device model proves that it speaks for a domain (docs/broker.md, "Who may ask
//! what").
//!
//! Two proofs, and nothing else: the broker saw that the connecting process is the pid the
//! toolstack recorded as the domain's device model, or the request carries the secret
//! token `ptguard attach` handed out for the device's current assignment. A number a
//! caller merely knows (a domid, an epoch, a pirq) proves nothing. The ledger keeps only
//! the token's SHA-256 digest (`credential=` in the record's head), so reading the ledger,
//! or a report that captured it, does not give the token away.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The secret a device model presents: 32 random bytes, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct AssignmentToken([u8; 32]);

impl AssignmentToken {
    /// A token from 32 bytes of the caller's entropy (the engine does no I/O of its own).
    pub fn from_entropy(bytes: [u8; 32]) -> AssignmentToken {
        AssignmentToken(bytes)
    }

    /// What the ledger keeps of it.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(Sha256::digest(self.0).into())
    }
}

impl fmt::Display for AssignmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Never printed by `{:?}`: a token in a log line would be a token given away.
impl fmt::Debug for AssignmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AssignmentToken(..)")
    }
}

impl FromStr for AssignmentToken {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<AssignmentToken, &'static str> {
        parse_hex32(s)
            .map(AssignmentToken)
            .ok_or("a token is 64 hex digits")
    }
}

/// SHA-256 of an [`AssignmentToken`], as the record's head keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Whether `token` is the one this digest was made from. The comparison takes the same
    /// time whatever the bytes, so a caller cannot find the digest byte by byte.
    pub fn admits(&self, token: &AssignmentToken) -> bool {
        let other = token.digest();
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

impl serde::Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for TokenDigest {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<TokenDigest, &'static str> {
        parse_hex32(s)
            .map(TokenDigest)
            .ok_or("a credential digest is 64 hex digits")
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
        // from_str_radix takes a leading '+'; a token never has one.
        if !pair.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
    }
    Some(out)
}

/// How a broker request proved who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The connecting process is the pid libxl recorded as the domain's device model
    /// (`/local/domain/<domid>/image/device-model-pid`, seen with `SO_PEERCRED`).
    VerifiedDeviceModel,
    /// The token `ptguard attach` printed for the device's current assignment.
    Token(AssignmentToken),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_digest_admits_its_own_token_only() {
        let t = AssignmentToken::from_entropy([7; 32]);
        let u = AssignmentToken::from_entropy([8; 32]);
        assert!(t.digest().admits(&t));
        assert!(!t.digest().admits(&u));
        assert_ne!(
            t.digest().to_string(),
            t.to_string(),
            "the digest is not the token"
        );
        assert_eq!(format!("{t:?}"), "AssignmentToken(..)");
    }

    #[test]
    fn tokens_parse_strictly() {
        assert!("".parse::<AssignmentToken>().is_err());
        assert!("+f".repeat(32).parse::<AssignmentToken>().is_err());
        assert!("g0".repeat(32).parse::<AssignmentToken>().is_err());
        assert!("00".repeat(33).parse::<AssignmentToken>().is_err());
        let t: AssignmentToken = "a5".repeat(32).parse().unwrap();
        assert_eq!(t.to_string(), "a5".repeat(32));
    }

    proptest! {
        #[test]
        fn tokens_and_digests_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let t = AssignmentToken::from_entropy(bytes);
            prop_assert_eq!(t.to_string().parse::<AssignmentToken>().unwrap(), t.clone());
            let d = t.digest();
            prop_assert_eq!(d.to_string().parse::<TokenDigest>().unwrap(), d);
        }
    }
}
