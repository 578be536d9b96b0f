//! Cache keys: BLAKE3 over a canonical, length-prefixed encoding of a step's
//! inputs. docs/CACHE.md is the normative definition; keep the two in sync and
//! bump [`KEY_VERSION`] whenever the encoding or the meaning of an input changes.

/// Part of every key, so a change of key definition can never reuse old entries.
pub const KEY_VERSION: &str = "memobuild-step-key-v2";

/// Accumulates length-prefixed fields: `u64 LE length || bytes` each, so no two
/// different field sequences encode to the same bytes.
pub struct KeyHasher {
    hasher: blake3::Hasher,
}

impl KeyHasher {
    pub fn new(kind: &str) -> KeyHasher {
        let mut k = KeyHasher {
            hasher: blake3::Hasher::new(),
        };
        k.field(KEY_VERSION.as_bytes());
        k.field(kind.as_bytes());
        k
    }

    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.field(s.as_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.field(&v.to_le_bytes())
    }

    /// A list: its length, then each item.
    pub fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.u64(items.len() as u64);
        for s in items {
            self.str(s);
        }
        self
    }

    pub fn finish(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}
