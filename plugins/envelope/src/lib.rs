//! `envelope`: authenticated encryption of cache values and pub/sub
//! payloads at rest.
//!
//! On the way in (a cache write, a publish) a value is sealed with
//! XChaCha20-Poly1305 under the active key; on the way out (a cache read,
//! a delivery, a history read) it is opened with the key its envelope
//! names. What the backend stores, and what crosses Redis, is only ever
//! the envelope:
//!
//! ```text
//! "OE" 0x01 | key id length (1 byte) | key id | nonce (24 bytes) | ciphertext and tag (16 bytes)
//! ```
//!
//! The associated data binds an envelope to its namespace, its primitive
//! (cache or pub/sub) and its key or channel: one copied elsewhere in
//! Redis fails to open, as does one with any byte changed. Refused values
//! are never returned. Keys come from the plugin's config and are never
//! logged; each has an id, so a new key can be made active while the old
//! ones still open what they sealed. See README.md.

use std::collections::BTreeMap;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use outrigger_plugin_sdk::{Config, OnValue, Plugin, ValueDecision, ValueEvent, ValuePoint};
use serde::Deserialize;

/// What an envelope starts with: its format, version 1.
const MAGIC: &[u8; 3] = b"OE\x01";
/// XChaCha20's nonce: random, large enough never to repeat by chance.
const NONCE_BYTES: usize = 24;
/// Poly1305's tag.
const TAG_BYTES: usize = 16;
/// Longest key id (it is stored in every envelope).
const MAX_KEY_ID: usize = 64;
/// Bytes of a key.
const KEY_BYTES: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Key id to key, 32 bytes in standard base64.
    keys: BTreeMap<String, String>,
    /// The key id new values are sealed with.
    active: String,
    /// Pass stored values that are not envelopes on as they are (while
    /// migrating a cache written before the plugin was configured).
    #[serde(default)]
    accept_plaintext: bool,
}

struct Envelope {
    ciphers: BTreeMap<String, XChaCha20Poly1305>,
    active: String,
    accept_plaintext: bool,
}

impl Plugin for Envelope {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.keys.is_empty() {
            return Err("keys: at least one key is needed".into());
        }
        let mut ciphers = BTreeMap::new();
        for (id, key) in &settings.keys {
            if id.is_empty() || id.len() > MAX_KEY_ID || id.chars().any(char::is_control) {
                return Err(format!(
                    "key id {id:?}: 1 to {MAX_KEY_ID} bytes without control characters"
                ));
            }
            // The error never quotes the key: it would end up in a log.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .ok()
                .filter(|bytes| bytes.len() == KEY_BYTES)
                .ok_or_else(|| format!("key {id:?} is not {KEY_BYTES} bytes in standard base64"))?;
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| format!("key {id:?} is not a {KEY_BYTES}-byte key"))?;
            ciphers.insert(id.clone(), cipher);
        }
        if !ciphers.contains_key(&settings.active) {
            return Err(format!(
                "active key id {:?} is not among keys ({})",
                settings.active,
                ciphers.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(Envelope {
            ciphers,
            active: settings.active,
            accept_plaintext: settings.accept_plaintext,
        })
    }
}

impl OnValue for Envelope {
    fn on_value(&self, event: &ValueEvent) -> ValueDecision {
        let done = if event.point.is_inbound() {
            self.seal(event)
        } else {
            self.open(event)
        };
        done.unwrap_or_else(ValueDecision::Deny)
    }
}

impl Envelope {
    fn seal(&self, event: &ValueEvent) -> Result<ValueDecision, String> {
        let cipher = &self.ciphers[&self.active];
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|err| format!("no random nonce: {err}"))?;
        let aad = associated_data(event);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &event.value,
                    aad: &aad,
                },
            )
            .map_err(|_| "the value could not be sealed".to_string())?;
        let id = self.active.as_bytes();
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_BYTES + sealed.len());
        out.extend_from_slice(MAGIC);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(ValueDecision::Replace(out))
    }

    fn open(&self, event: &ValueEvent) -> Result<ValueDecision, String> {
        let Some(rest) = event.value.strip_prefix(MAGIC) else {
            return if self.accept_plaintext {
                Ok(ValueDecision::Keep)
            } else {
                Err("the stored value is not sealed (accept_plaintext is off)".into())
            };
        };
        let malformed = || "the stored value is a malformed envelope".to_string();
        let (&id_len, rest) = rest.split_first().ok_or_else(malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_BYTES + TAG_BYTES {
            return Err(malformed());
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let id = std::str::from_utf8(id).map_err(|_| malformed())?;
        let cipher = self.ciphers.get(id).ok_or_else(|| {
            format!("the stored value is sealed with key id {id:?}, which is not configured")
        })?;
        let aad = associated_data(event);
        let plain = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                "the stored value failed authentication: it was changed, or sealed for another \
                 key, namespace or target"
                    .to_string()
            })?;
        Ok(ValueDecision::Replace(plain))
    }
}

/// What an envelope is bound to: its namespace, its primitive and its key
/// or channel.
fn associated_data(event: &ValueEvent) -> Vec<u8> {
    let kind: &[u8] = match event.point {
        ValuePoint::CacheWrite | ValuePoint::CacheRead => b"cache",
        ValuePoint::Publish | ValuePoint::Deliver => b"pubsub",
    };
    let mut aad = Vec::with_capacity(32 + event.namespace.len() + event.target.len());
    aad.extend_from_slice(b"outrigger-envelope/1\0");
    aad.extend_from_slice(event.namespace.as_bytes());
    aad.push(0);
    aad.extend_from_slice(kind);
    aad.push(0);
    aad.extend_from_slice(event.target.as_bytes());
    aad
}

outrigger_plugin_sdk::export!(Envelope: on_value);

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn plugin(json: &str) -> Result<Envelope, String> {
        Envelope::new(Config::from_json(json))
    }

    fn event(point: ValuePoint, target: &str, value: &[u8]) -> ValueEvent {
        ValueEvent {
            point,
            namespace: "app".into(),
            target: target.into(),
            value: value.to_vec(),
            caller: None,
            attributes: vec![],
        }
    }

    fn seal(p: &Envelope, target: &str, value: &[u8]) -> Vec<u8> {
        match p.on_value(&event(ValuePoint::CacheWrite, target, value)) {
            ValueDecision::Replace(sealed) => sealed,
            other => panic!("sealing answered {other:?}"),
        }
    }

    fn open(p: &Envelope, point: ValuePoint, target: &str, value: &[u8]) -> ValueDecision {
        p.on_value(&event(point, target, value))
    }

    #[test]
    fn seals_and_opens_and_binds_to_the_target() {
        let p = plugin(&format!(r#"{{"keys": {{"k1": "{K1}"}}, "active": "k1"}}"#)).unwrap();
        let sealed = seal(&p, "user:1", b"secret");
        assert!(sealed.starts_with(b"OE\x01\x02k1"));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(sealed.len(), 3 + 1 + 2 + 24 + 6 + 16);
        assert_eq!(
            open(&p, ValuePoint::CacheRead, "user:1", &sealed),
            ValueDecision::Replace(b"secret".to_vec())
        );
        // Random nonces: the same value seals differently each time.
        assert_ne!(seal(&p, "user:1", b"secret"), sealed);
        // Another key, another primitive: refused.
        let refused = |d: ValueDecision| matches!(d, ValueDecision::Deny(r) if r.contains("failed authentication"));
        assert!(refused(open(&p, ValuePoint::CacheRead, "user:2", &sealed)));
        assert!(refused(open(&p, ValuePoint::Deliver, "user:1", &sealed)));
        // Any byte changed: refused.
        for i in 6..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                refused(open(&p, ValuePoint::CacheRead, "user:1", &bad)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = plugin(&format!(r#"{{"keys": {{"k1": "{K1}"}}, "active": "k1"}}"#)).unwrap();
        let new = plugin(&format!(
            r#"{{"keys": {{"k1": "{K1}", "k2": "{K2}"}}, "active": "k2"}}"#
        ))
        .unwrap();
        let before = seal(&old, "k", b"v1");
        assert_eq!(
            open(&new, ValuePoint::CacheRead, "k", &before),
            ValueDecision::Replace(b"v1".to_vec())
        );
        let after = seal(&new, "k", b"v2");
        assert!(after.starts_with(b"OE\x01\x02k2"));
        assert_eq!(
            open(&old, ValuePoint::CacheRead, "k", &after),
            ValueDecision::deny(
                "the stored value is sealed with key id \"k2\", which is not configured"
            )
        );
    }

    #[test]
    fn plaintext_and_malformed_values_are_refused_unless_accepted() {
        let strict = plugin(&format!(r#"{{"keys": {{"k1": "{K1}"}}, "active": "k1"}}"#)).unwrap();
        assert!(matches!(
            open(&strict, ValuePoint::CacheRead, "k", b"plain"),
            ValueDecision::Deny(r) if r.contains("not sealed")
        ));
        assert!(matches!(
            open(&strict, ValuePoint::CacheRead, "k", b"OE\x01\x05k1"),
            ValueDecision::Deny(r) if r.contains("malformed")
        ));
        let lenient = plugin(&format!(
            r#"{{"keys": {{"k1": "{K1}"}}, "active": "k1", "accept_plaintext": true}}"#
        ))
        .unwrap();
        assert_eq!(
            open(&lenient, ValuePoint::CacheRead, "k", b"plain"),
            ValueDecision::Keep
        );
    }

    #[test]
    fn bad_configs_are_refused_without_quoting_keys() {
        for (json, says) in [
            (
                r#"{"keys": {}, "active": "k1"}"#.to_string(),
                "at least one key",
            ),
            (
                r#"{"keys": {"k1": "c2VjcmV0LWJ1dC1zaG9ydA=="}, "active": "k1"}"#.to_string(),
                "key \"k1\" is not 32 bytes",
            ),
            (
                format!(r#"{{"keys": {{"k1": "{K1}"}}, "active": "k9"}}"#),
                "active key id \"k9\" is not among keys (k1)",
            ),
            (
                format!(r#"{{"keys": {{"k1": "{K1}"}}}}"#),
                "missing field `active`",
            ),
        ] {
            let err = plugin(&json).err().unwrap();
            assert!(err.contains(says), "{json}: {err}");
            assert!(!err.contains("c2VjcmV0") && !err.contains(K1), "{err}");
        }
    }
}
