//! The bench harness, shared by every benchmark: finding the release
//! binaries, the knobs (`MEMOBUILD_BENCH_*`), a seeded PRNG and a
//! deterministic build-context generator (same seed and parameters =
//! byte-identical tree); in submodules the one way to run a daemon
//! ([`daemon`]), the one BuildKit driver ([`buildkit`]), the report format
//! ([`report`]) and the machine line ([`machine`]).
//!
//! The tree has 100 directories (`d0`..`d9`, each with `s1`..`s9`). File sizes
//! are spread log-uniformly (a few bytes to ~100 KB) plus one large file
//! (1-4 MB) per thousand, scaled so the sizes add up exactly to the requested
//! total. About half the files are "text" (words from a small vocabulary,
//! compresses ~3-4x with gzip), the rest random bytes (incompressible), so
//! layer compression does realistic work.

#![allow(dead_code)]

pub mod buildkit;
pub mod daemon;
pub mod machine;
pub mod report;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The seed of the generated contexts ("memobuil"): every bench builds the
/// same tree.
pub const SEED: u64 = 0x6d65_6d6f_6275_696c;

/// xoshiro256** seeded through splitmix64: fast, deterministic, good enough.
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// The 100 directories of a generated tree, in creation order.
pub fn dirs() -> Vec<String> {
    let mut out = Vec::new();
    for d in 0..10 {
        out.push(format!("d{d}"));
        for s in 1..10 {
            out.push(format!("d{d}/s{s}"));
        }
    }
    out
}

const TEXT_EXTS: &[&str] = &["rs", "txt", "json", "md", "html", "c", "py", "toml"];
const BINARY_EXTS: &[&str] = &["bin", "png", "so", "gz"];
const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "return",
    "struct",
    "impl",
    "self",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "use",
    "pub",
    "const",
    "static",
    "where",
    "for",
    "in",
    "if",
    "else",
    "loop",
    "while",
    "break",
    "value",
    "index",
    "buffer",
    "context",
    "layer",
    "digest",
    "cache",
    "build",
    "image",
    "the",
    "a",
    "of",
    "to",
    "and",
    "is",
    "0",
    "1",
    "42",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "->",
    "::",
    "\n",
    "\n    ",
    "\n        ",
];

#[derive(Debug, Clone)]
pub struct GenFile {
    /// Slash-separated path relative to the tree root.
    pub rel: String,
    pub size: u64,
    pub text: bool,
}

/// Decides names and sizes (no I/O). `total` bytes over `files` files.
pub fn plan_tree(files: usize, total: u64, seed: u64) -> Vec<GenFile> {
    let mut rng = Rng::new(seed);
    let dirs = dirs();
    let n_large = files / 1000;
    let large_total = if n_large > 0 { total / 4 } else { 0 };
    let small_total = total - large_total;
    let is_large = |i: usize| n_large > 0 && i % 1000 == 500;
    let mut weights = Vec::with_capacity(files);
    for i in 0..files {
        let w = if is_large(i) {
            1.0 + 3.0 * rng.unit() // 1..4 (MB, after scaling)
        } else {
            (rng.unit() * 10_000f64.ln()).exp() // log-uniform 1..10_000
        };
        weights.push(w);
    }
    let sum_large: f64 = (0..files)
        .filter(|&i| is_large(i))
        .map(|i| weights[i])
        .sum();
    let sum_small: f64 = (0..files)
        .filter(|&i| !is_large(i))
        .map(|i| weights[i])
        .sum();
    let mut out = Vec::with_capacity(files);
    let mut assigned = 0u64;
    for (i, w) in weights.iter().enumerate() {
        let size = if is_large(i) {
            (w / sum_large * large_total as f64) as u64
        } else {
            (w / sum_small * small_total as f64) as u64
        };
        assigned += size;
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        let text = rng.below(2) == 0;
        let ext = if text {
            TEXT_EXTS[rng.below(TEXT_EXTS.len() as u64) as usize]
        } else {
            BINARY_EXTS[rng.below(BINARY_EXTS.len() as u64) as usize]
        };
        out.push(GenFile {
            rel: format!("{dir}/f{i:05}.{ext}"),
            size,
            text,
        });
    }
    // Rounding leftovers go to the first file so the total is exact.
    if let Some(first) = out.first_mut() {
        first.size += total.saturating_sub(assigned);
    }
    out
}

/// Content of one file: deterministic in (seed, path, size).
pub fn content(file: &GenFile, seed: u64, buf: &mut Vec<u8>) {
    let mut rng = Rng::new(seed ^ fnv1a(file.rel.as_bytes()));
    buf.clear();
    buf.resize(file.size as usize, 0);
    if !file.text {
        rng.fill(buf);
        return;
    }
    let mut pos = 0;
    while pos < buf.len() {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        for &b in word.iter().chain(b" ") {
            if pos == buf.len() {
                break;
            }
            buf[pos] = b;
            pos += 1;
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes the tree under `root` (which must exist) and returns its files.
pub fn generate_tree(root: &Path, files: usize, total: u64, seed: u64) -> io::Result<Vec<GenFile>> {
    for d in dirs() {
        fs::create_dir_all(root.join(&d))?;
    }
    let plan = plan_tree(files, total, seed);
    let mut buf = Vec::new();
    for f in &plan {
        content(f, seed, &mut buf);
        let mut out = fs::File::create(root.join(&f.rel))?;
        out.write_all(&buf)?;
    }
    Ok(plan)
}

/// Rewrites `file` in place with new content of the same size (`generation`
/// picks which content), as an editor saving a change would.
pub fn rewrite_file(root: &Path, file: &GenFile, generation: u64) -> io::Result<()> {
    let mut buf = Vec::new();
    content(
        file,
        0xC0FF_EE00 ^ generation.wrapping_mul(0x9E37_79B9),
        &mut buf,
    );
    fs::write(root.join(&file.rel), &buf)
}

/// The file a one-file-change scenario edits: a ~10 kB file in `d9/`.
pub fn file_to_change(plan: &[GenFile]) -> GenFile {
    plan.iter()
        .filter(|f| f.rel.starts_with("d9/"))
        .min_by_key(|f| f.size.abs_diff(10_000))
        .cloned()
        .expect("a file in d9")
}

/// `MEMOBUILD_BENCH_ONLY=a,b`: whether scenario `part` is to run (all when unset).
pub fn wanted(part: &str) -> bool {
    match std::env::var("MEMOBUILD_BENCH_ONLY") {
        Ok(v) if !v.is_empty() => v.split(',').any(|p| p.trim() == part),
        _ => true,
    }
}

/// Reads a numeric knob from the environment (`default` when unset); exits
/// with a message naming `bench` when it is not a number.
pub fn env_usize(bench: &str, name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("{bench} bench: {name}={v:?} is not a number");
            std::process::exit(2)
        }),
        _ => default,
    }
}

/// The release binaries the end-to-end benches drive.
pub struct Bins {
    /// The bench's name, for its messages.
    pub bench: &'static str,
    pub daemon: std::path::PathBuf,
    pub ctl: std::path::PathBuf,
}

/// Finds the binaries: in `MEMOBUILD_BENCH_BIN_DIR` when set (e.g. an older
/// build to compare with), else the release binaries next to the bench
/// executable (target/release/deps/NAME-<hash>: its grandparent), else in
/// target/release; exits with how to build them when missing, warns when they
/// are older than the sources.
pub fn find_bins(bench: &'static str) -> Bins {
    use std::path::PathBuf;
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("MEMOBUILD_BENCH_BIN_DIR") {
        let dir = PathBuf::from(dir);
        let bins = Bins {
            bench,
            daemon: dir.join("memobuildd"),
            ctl: dir.join("memobuild-ctl"),
        };
        if !bins.daemon.is_file() || !bins.ctl.is_file() {
            eprintln!(
                "{bench} bench: MEMOBUILD_BENCH_BIN_DIR={} holds no memobuildd and memobuild-ctl",
                dir.display()
            );
            std::process::exit(2);
        }
        return bins;
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.push(manifest.join("target/release"));
    for dir in &dirs {
        let bins = Bins {
            bench,
            daemon: dir.join("memobuildd"),
            ctl: dir.join("memobuild-ctl"),
        };
        if bins.daemon.is_file() && bins.ctl.is_file() {
            warn_if_stale(bench, &bins, &manifest);
            return bins;
        }
    }
    eprintln!(
        "{bench} bench: the release binaries memobuildd and memobuild-ctl were not found in {}.\n\
         Build them first:  cargo build --release --workspace --bins",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    );
    std::process::exit(2);
}

fn warn_if_stale(bench: &str, bins: &Bins, manifest: &Path) {
    use std::path::PathBuf;
    let built = [&bins.daemon, &bins.ctl]
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .min();
    let Some(built) = built else { return };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = ["memobuildd/src", "memobuild-ctl/src", "crates"]
        .iter()
        .map(|d| manifest.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(read) = fs::read_dir(&dir) else {
            continue;
        };
        for e in read.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, p));
                }
            }
        }
    }
    if let Some((t, p)) = newest {
        if t > built {
            eprintln!(
                "{bench} bench: WARNING: {} is newer than the release binaries; \
                 you are benchmarking old code (cargo build --release --workspace --bins)",
                p.display()
            );
        }
    }
}

/// Runs a command to completion (stdin closed): its wall time and output.
pub fn timed(cmd: &mut std::process::Command) -> (std::time::Duration, std::process::Output) {
    let started = std::time::Instant::now();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    (started.elapsed(), out)
}

/// The bench's temp dir in /tmp (short paths: containerd's socket under a
/// daemon's data dir must fit in sun_path), removed when dropped.
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("creating a temp dir in /tmp")
}

/// Files modified less than `RACY_WINDOW_NS` (2 s) before they are hashed
/// are not cached (git's racy rule), so the first re-plans after generating
/// a tree would hash them all again. A real project's files are older than
/// that: a bench waits it out after generating its tree.
pub fn wait_out_racy_window() {
    let racy = memobuild_context::hash::RACY_WINDOW_NS as u64;
    std::thread::sleep(
        std::time::Duration::from_nanos(racy) + std::time::Duration::from_millis(100),
    );
}
