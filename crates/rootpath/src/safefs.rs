//! Files the daemon (root) opens or writes on a user's behalf, where what is on
//! disk must not steer it:
//!
//! - [`read_capped`]: a file that must be a regular file (a Dockerfile, an ignore
//!   file). A FIFO, device or socket is refused without opening it (an `O_PATH`
//!   handle is checked, then reopened through `/proc/self/fd`, so a swap between
//!   check and open cannot slip in), and the size is capped.
//! - [`open_regular`]: the same for streaming reads (context files).
//! - [`Root`]: writing a tree below a directory (a bind mount's source taken
//!   from a stage). Parent directories are resolved with `openat2(RESOLVE_IN_ROOT)`,
//!   so a symlink in the tree (even `esc -> /etc`) resolves inside the root as it
//!   would in the container; the last component is created with the `*at` calls,
//!   which never follow it.

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why a file could not be read as the regular file it should be.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is {size} bytes; at most {limit} bytes are read", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
}

impl ReadError {
    /// True when the file does not exist (callers fall back to another one).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "special file",
    }
}

/// Opens `path` for reading if it is a regular file; never opens anything else
/// (opening a FIFO blocks, opening some devices has effects). With `follow`
/// false, a symlink as the last component is refused too.
///
/// With a reader set on this thread ([`crate::creds::reading_as`]), the file is
/// opened with that user's rights: a file they may not read is refused
/// ("Permission denied"), whatever the daemon's own rights.
pub fn open_regular(path: &Path, follow: bool) -> Result<(File, u64), ReadError> {
    if crate::creds::current().is_some() {
        return crate::creds::as_reader(|| open_regular_as_reader(path, follow)).map_err(
            |source| ReadError::Io {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    let io_err = |source: rustix::io::Errno| ReadError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let handle = rfs::open(path, flags, Mode::empty()).map_err(io_err)?;
    let stat = rfs::fstat(&handle).map_err(io_err)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(kind),
        });
    }
    // The very inode checked above, now opened for reading.
    let fd = rfs::open(
        format!("/proc/self/fd/{}", handle.as_fd().as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(io_err)?;
    Ok((File::from(fd), stat.st_size.max(0) as u64))
}

/// [`open_regular`] with a user's credentials in effect on this thread. The
/// reopen through `/proc/self/fd` is not open to a user (the daemon's /proc
/// entries are root's), so the path is opened again, non-blocking (a FIFO
/// swapped in returns at once), and must be the very inode checked.
fn open_regular_as_reader(path: &Path, follow: bool) -> Result<(File, u64), ReadError> {
    let io_err = |source: rustix::io::Errno| ReadError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let nofollow = if follow {
        OFlags::empty()
    } else {
        OFlags::NOFOLLOW
    };
    let handle = rfs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC | nofollow,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let stat = rfs::fstat(&handle).map_err(io_err)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(kind),
        });
    }
    let fd = rfs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | nofollow,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let again = rfs::fstat(&fd).map_err(io_err)?;
    if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(ReadError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("it was replaced while being opened"),
        });
    }
    // Regular files ignore O_NONBLOCK; cleared anyway for plain reads.
    rfs::fcntl_setfl(&fd, OFlags::empty()).map_err(io_err)?;
    Ok((File::from(fd), stat.st_size.max(0) as u64))
}

/// The whole content of regular file `path`, at most `limit` bytes.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let (file, size) = open_regular(path, true)?;
    let too_large = |size| ReadError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut buf = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_capped(path, limit)?).map_err(|_| ReadError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// A directory that writes below it cannot leave, whatever symlinks the tree
/// written into it holds. Paths are slash-separated and relative to the root.
pub struct Root {
    fd: OwnedFd,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    e.into()
}

impl Root {
    /// Opens directory `path` (itself not through a symlink).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Root { fd })
    }

    /// The directory holding `rel`'s last component (resolved with this root
    /// as `/`) and that component.
    fn parent<'a>(&self, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        let rel = rel.trim_matches('/');
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if name.is_empty() || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{rel:?} names no file"),
            ));
        }
        let dir = if dir.is_empty() { "." } else { dir };
        let fd = rfs::openat2(
            &self.fd,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(errno)?;
        Ok((fd, name))
    }

    /// Creates directory `rel` (an existing directory is kept) and sets its mode.
    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        match rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // NOFOLLOW: an existing symlink by that name is refused, not followed.
        let dir = rfs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        rfs::fchmod(&dir, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)
    }

    /// Creates symlink `rel` pointing at `target` (never followed here).
    pub fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        rfs::symlinkat(target, &parent, name).map_err(errno)
    }

    /// Moves the daemon's own file `from` to `rel`, with `mode`.
    pub fn move_in(&self, from: &Path, rel: &str, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(from, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let (parent, name) = self.parent(rel)?;
        rfs::renameat(rfs::CWD, from, &parent, name).map_err(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_in_the_tree_resolves_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("existing")).unwrap();
        std::fs::set_permissions(
            host.path().join("existing"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let root = Root::open(out.path()).unwrap();
        let host_dir = host.path().to_str().unwrap();
        root.symlink(host_dir, "esc").unwrap();
        // Through the link: lands at <root><host_dir>/..., which does not exist.
        assert!(root.mkdir("esc/new", 0o777).is_err());
        assert!(root.mkdir("esc/existing", 0o777).is_err());
        let staged = out.path().join("staged");
        std::fs::write(&staged, "x").unwrap();
        assert!(root.move_in(&staged, "esc/pwned", 0o644).is_err());
        // A link as the last component is not followed either.
        root.symlink(&format!("{host_dir}/existing"), "last")
            .unwrap();
        assert!(root.mkdir("last", 0o777).is_err());
        assert!(!host.path().join("new").exists());
        assert!(!host.path().join("pwned").exists());
        let mode = std::fs::metadata(host.path().join("existing"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
        // Inside the root, the same link leads where the container would see it.
        root.mkdir("tmp", 0o755).unwrap();
        root.symlink("/tmp", "t").unwrap();
        root.mkdir("t/inside", 0o750).unwrap();
        let mode = std::fs::metadata(out.path().join("tmp/inside"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_capped(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = read_capped(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789ab").unwrap();
        let err = read_capped(&file, 10).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { size: 12, .. }), "{err}");
        assert_eq!(read_capped(&file, 12).unwrap(), b"0123456789ab");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link, true).is_ok());
        assert!(matches!(
            open_regular(&link, false),
            Err(ReadError::NotRegular { .. })
        ));
        assert!(read_capped(&dir.path().join("missing"), 1)
            .unwrap_err()
            .is_not_found());
    }
}
