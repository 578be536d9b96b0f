//! Cache keys: BLAKE3 over a canonical, length-prefixed encoding of a step's
//! inputs. docs/CACHE.md is the normative definition; keep the two in sync and
//! bump [`KEY_VERSION`] whenever the encoding or the meaning of an input changes.

/// Part of every key, so a change of key definition can never reuse old entries.
pub const KEY_VERSION: &str = "memobuild-step-key-v5";

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

/// A step's key: its parent's key, its own inputs ([`KeyHasher`] kind `own`)
/// and the content digests of the stage paths it reads (`COPY --from`,
/// `RUN --mount=type=bind,from=`), in instruction order.
pub fn step_key(parent: &str, own: &str, contents: &[String]) -> String {
    let mut k = KeyHasher::new("step");
    k.str(parent).str(own);
    k.strs(contents.iter().map(String::as_str));
    k.finish()
}

/// Names the content of `paths` in the result of the stage whose key is
/// `stage_key`: where a computed content digest is remembered.
pub fn content_ref_key(stage_key: &str, paths: &[String]) -> String {
    let mut k = KeyHasher::new("stage-content-ref");
    k.str(stage_key).strs(paths.iter().map(String::as_str));
    k.finish()
}

/// Stands in for a content digest that is not known before the stage runs:
/// it makes the planned key of such a step (a *pending* key) unique to the
/// stage's key, but the step is looked up under the key with the real digest.
pub(crate) fn pending_content(stage_key: &str, paths: &[String]) -> String {
    let mut k = KeyHasher::new("stage-content-pending");
    k.str(stage_key).strs(paths.iter().map(String::as_str));
    k.finish()
}
