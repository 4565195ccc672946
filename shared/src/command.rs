//! Signed commands: the issuer signs a [`Command`] with an Ed25519 [`SigningKey`]; the agent
//! checks it with the matching [`VerifyingKey`] before doing anything.
//!
//! What is signed is exactly the command's [`to_wire`] bytes, carried unchanged in
//! [`SignedCommand::body`], so the agent verifies the bytes it received, never a re-encoding.
//! Keys travel as hex: a signing key as its 32-byte seed (64 hex digits, a secret), a verifying
//! key as its 32-byte public key (64 hex digits). A key's id ([`key_id`]) is the first 8 hex
//! digits of the SHA-256 of the public key: it names the key in logs and audit records.

use aws_lc_rs::{
    digest,
    rand::{SecureRandom, SystemRandom},
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};

use crate::model::{Command, SignedCommand, WireError, from_wire, to_wire};

/// How far in the future a command's `issued_ns` may be (the issuer's and the agent's clocks
/// disagree a little); beyond this it is refused as [`VerifyError::FromFuture`].
pub const MAX_CLOCK_SKEW_NS: i64 = 5 * 60 * 1_000_000_000;

const KEY_LEN: usize = 32;

/// Why a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is {expected} hex digits, found {found} characters")]
    Length { expected: usize, found: usize },
    #[error("a key is hex digits only, found {found:?} at position {position}")]
    NotHex { position: usize, found: char },
    #[error("the system random number generator failed")]
    Random,
    #[error("the crypto library rejected the key")]
    Rejected,
}

/// Why a signed command was refused. The variants are checked in this order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signed with key {found:?}, this agent trusts key {expected}")]
    UnknownKey { expected: String, found: String },
    #[error("bad signature")]
    BadSignature,
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("command is for agent {found:?}, this is {expected:?}")]
    WrongAgent { expected: String, found: String },
    #[error("command expired at {expires_ns} ns, now is {now_ns} ns")]
    Expired { expires_ns: i64, now_ns: i64 },
    #[error("command issued at {issued_ns} ns, in the future (now is {now_ns} ns)")]
    FromFuture { issued_ns: i64, now_ns: i64 },
}

impl VerifyError {
    /// A stable lower-case name, e.g. for a counter label or an audit record.
    pub const fn name(&self) -> &'static str {
        match self {
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::WrongAgent { .. } => "wrong_agent",
            VerifyError::Expired { .. } => "expired",
            VerifyError::FromFuture { .. } => "from_future",
        }
    }
}

/// The issuer's secret key. `Debug` shows only the key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; KEY_LEN],
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key (from the operating system's random source).
    ///
    /// # Errors
    /// [`KeyError::Random`] when the system random number generator fails.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut seed).map_err(|_| KeyError::Random)?;
        Self::from_seed(seed)
    }

    /// The key whose seed is `hex` (64 hex digits, as [`SigningKey::seed_hex`] writes it).
    ///
    /// # Errors
    /// When `hex` is not 64 hex digits.
    pub fn from_seed_hex(hex: &str) -> Result<Self, KeyError> {
        Self::from_seed(decode_key(hex)?)
    }

    fn from_seed(seed: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Rejected)?;
        Ok(SigningKey { pair, seed })
    }

    /// The secret seed, 64 hex digits: store it like a password.
    pub fn seed_hex(&self) -> String {
        encode_hex(&self.seed)
    }

    /// The public key, 64 hex digits: what an agent's `[commands] public_key` holds.
    pub fn public_key_hex(&self) -> String {
        encode_hex(self.pair.public_key().as_ref())
    }

    /// See [`key_id`].
    pub fn key_id(&self) -> String {
        key_id(self.pair.public_key().as_ref())
    }

    /// The key that verifies this key's signatures.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey { public }
    }

    /// Encodes `command` and signs the bytes.
    ///
    /// # Errors
    /// When the command cannot be encoded.
    pub fn sign(&self, command: &Command) -> Result<SignedCommand, WireError> {
        let body = to_wire(command)?;
        let signature = self.pair.sign(&body).as_ref().to_vec();
        Ok(SignedCommand { key_id: self.key_id(), body, signature })
    }
}

/// The public key an agent checks commands with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    public: [u8; KEY_LEN],
}

impl VerifyingKey {
    /// The key `hex` (64 hex digits, as [`SigningKey::public_key_hex`] writes it).
    ///
    /// # Errors
    /// When `hex` is not 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        Ok(VerifyingKey { public: decode_key(hex)? })
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.public)
    }

    /// See [`key_id`].
    pub fn key_id(&self) -> String {
        key_id(&self.public)
    }

    /// Checks `signed` and returns the command it carries, if this agent may execute it at
    /// `now_ns`: the key id names this key, the signature covers exactly `body`, the body decodes,
    /// the command is for `expected_agent`, it has not expired (`now_ns <= expires_ns`) and it was
    /// not issued more than [`MAX_CLOCK_SKEW_NS`] in the future. Replays are the caller's to refuse
    /// (it knows which ids it executed).
    ///
    /// # Errors
    /// The first check that failed, in the order above.
    pub fn verify(&self, signed: &SignedCommand, expected_agent: &str, now_ns: i64) -> Result<Command, VerifyError> {
        let expected = self.key_id();
        if signed.key_id != expected {
            return Err(VerifyError::UnknownKey { expected, found: signed.key_id.clone() });
        }
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(&signed.body, &signed.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let command: Command = from_wire(&signed.body).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if command.agent != expected_agent {
            return Err(VerifyError::WrongAgent { expected: expected_agent.to_owned(), found: command.agent });
        }
        if now_ns > command.expires_ns {
            return Err(VerifyError::Expired { expires_ns: command.expires_ns, now_ns });
        }
        if command.issued_ns > now_ns.saturating_add(MAX_CLOCK_SKEW_NS) {
            return Err(VerifyError::FromFuture { issued_ns: command.issued_ns, now_ns });
        }
        Ok(command)
    }
}

/// A public key's id: the first 8 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, public_key);
    encode_hex(hash.as_ref().get(..4).unwrap_or_default())
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn decode_key(hex: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let hex = hex.trim();
    if let Some((position, found)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(KeyError::NotHex { position, found });
    }
    if hex.len() != KEY_LEN * 2 {
        return Err(KeyError::Length { expected: KEY_LEN * 2, found: hex.chars().count() });
    }
    let mut out = [0u8; KEY_LEN];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let text = core::str::from_utf8(pair).map_err(|_| KeyError::Rejected)?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| KeyError::Rejected)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CommandAction;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const MINUTE: i64 = 60_000_000_000;

    fn command() -> Command {
        Command {
            id: 42,
            agent: "gw-1".into(),
            issued_ns: NOW - MINUTE,
            expires_ns: NOW + MINUTE,
            issuer: "alice".into(),
            action: CommandAction::ResetLatch { rule: "overtemp".into() },
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_seed_hex(&"11".repeat(32)).unwrap()
    }

    #[test]
    fn a_signed_command_round_trips_over_the_wire() {
        let key = SigningKey::generate().unwrap();
        let signed = key.sign(&command()).unwrap();
        let received: SignedCommand = from_wire(&to_wire(&signed).unwrap()).unwrap();
        let verifying = VerifyingKey::from_hex(&key.public_key_hex()).unwrap();
        assert_eq!(verifying.verify(&received, "gw-1", NOW), Ok(command()));
        assert_eq!(received.key_id, verifying.key_id());
        assert_eq!(key.key_id().len(), 8);
    }

    #[test]
    fn keys_round_trip_as_hex_and_hide_the_seed_in_debug() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_seed_hex(&key.seed_hex()).unwrap();
        assert_eq!(again.public_key_hex(), key.public_key_hex());
        assert_eq!(key.verifying_key().to_hex(), key.public_key_hex());
        assert!(!format!("{key:?}").contains(&key.seed_hex()));
        assert_ne!(SigningKey::generate().unwrap().public_key_hex(), key.public_key_hex());
    }

    #[test]
    fn bad_key_text_is_named() {
        assert_eq!(VerifyingKey::from_hex("abcd"), Err(KeyError::Length { expected: 64, found: 4 }));
        assert_eq!(
            VerifyingKey::from_hex(&format!("{}x", "0".repeat(63))),
            Err(KeyError::NotHex { position: 63, found: 'x' })
        );
        assert!(SigningKey::from_seed_hex("é").is_err());
        assert!(VerifyingKey::from_hex(&"AB".repeat(32)).is_ok());
    }

    #[test]
    fn a_flipped_bit_in_the_body_is_a_bad_signature() {
        let key = key();
        let mut signed = key.sign(&command()).unwrap();
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        assert_eq!(key.verifying_key().verify(&signed, "gw-1", NOW), Err(VerifyError::BadSignature));
        let mut signed = key.sign(&command()).unwrap();
        signed.signature[0] ^= 0x80;
        assert_eq!(key.verifying_key().verify(&signed, "gw-1", NOW), Err(VerifyError::BadSignature));
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let mut signed = SigningKey::generate().unwrap().sign(&command()).unwrap();
        let trusted = key().verifying_key();
        assert!(matches!(trusted.verify(&signed, "gw-1", NOW), Err(VerifyError::UnknownKey { .. })));
        // Claiming the trusted key's id does not help.
        signed.key_id = trusted.key_id();
        assert_eq!(trusted.verify(&signed, "gw-1", NOW), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_command_for_another_agent_is_refused() {
        let signed = key().sign(&command()).unwrap();
        assert_eq!(
            key().verifying_key().verify(&signed, "gw-2", NOW),
            Err(VerifyError::WrongAgent { expected: "gw-2".into(), found: "gw-1".into() })
        );
    }

    #[test]
    fn expiry_and_clock_skew_have_exact_edges() {
        let (key, verifying) = (key(), key().verifying_key());
        let signed = key.sign(&command()).unwrap();
        assert!(verifying.verify(&signed, "gw-1", NOW + MINUTE).is_ok());
        assert_eq!(
            verifying.verify(&signed, "gw-1", NOW + MINUTE + 1),
            Err(VerifyError::Expired { expires_ns: NOW + MINUTE, now_ns: NOW + MINUTE + 1 })
        );
        let early = NOW - MINUTE - MAX_CLOCK_SKEW_NS;
        assert!(verifying.verify(&signed, "gw-1", early).is_ok());
        assert_eq!(
            verifying.verify(&signed, "gw-1", early - 1),
            Err(VerifyError::FromFuture { issued_ns: NOW - MINUTE, now_ns: early - 1 })
        );
    }

    #[test]
    fn malformed_input_is_refused_never_a_panic() {
        let key = key();
        let verifying = key.verifying_key();
        // A validly signed body that is not a command.
        let body = vec![crate::model::WIRE_VERSION, 0xff, 0xff];
        let signature = key.pair.sign(&body).as_ref().to_vec();
        let signed = SignedCommand { key_id: key.key_id(), body, signature };
        assert!(matches!(verifying.verify(&signed, "gw-1", NOW), Err(VerifyError::Malformed(_))));
        // Arbitrary bytes, signatures of any length.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = from_wire::<SignedCommand>(&bytes);
            let signed = SignedCommand { key_id: key.key_id(), body: bytes.clone(), signature: bytes };
            assert!(verifying.verify(&signed, "gw-1", NOW).is_err());
        }
    }
}
