//! Helpers for unit tests that need real files.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Writes `root/rel`, creating missing directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Writes `root/rel` dated an hour ago: past the hash cache's racy window, so
/// its digest (and its directories' digests) may be cached.
pub fn write_old(root: &Path, rel: &str, text: &str) {
    write(root, rel, text);
    age(&root.join(rel));
}

/// Dates a file an hour back.
pub fn age(path: &Path) {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(hour_ago))
        .unwrap();
}
