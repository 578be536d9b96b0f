//! Reading files with another user's rights.
//!
//! The daemon runs as root but reads build contexts, Dockerfiles and ignore
//! files on behalf of the user who asked. Linux keeps credentials per thread,
//! so a thread can take that user's filesystem uid, gid and supplementary
//! groups for the opens it makes, and drop them again, without touching any
//! other thread. This uses the raw `setfsuid`, `setfsgid` and `setgroups`
//! system calls: glibc's `setgroups`/`setuid` family would change every thread
//! of the process.
//!
//! When the fs uid moves from 0 to another uid, the kernel clears the
//! filesystem capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
//! ...) from the thread's effective set, so permission checks are those of the
//! user; moving back to 0 restores them.
//!
//! [`reading_as`] sets who reads on the current thread for a closure; the
//! opens of [`crate::safefs`] ([`crate::safefs::open_regular`],
//! [`crate::safefs::read_capped`]) and whatever runs inside [`as_reader`] then
//! happen with those rights. A file opened that way may be read as root: the
//! kernel checks permissions at open.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

/// A user's filesystem identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (as `getgrouplist` gives them at login).
    pub groups: Vec<u32>,
}

#[derive(Default)]
struct State {
    creds: Option<Arc<Creds>>,
    /// The thread has switched to `creds` now.
    active: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` with `creds` as the reader of this thread's opens (`None`: the
/// daemon's own rights). Restores the previous reader afterwards, also when
/// `f` panics.
pub fn reading_as<T>(creds: Option<Arc<Creds>>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Option<Arc<Creds>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take().flatten();
            STATE.with(|s| s.borrow_mut().creds = previous);
        }
    }
    let previous = STATE.with(|s| std::mem::replace(&mut s.borrow_mut().creds, creds));
    let _restore = Restore(Some(previous));
    f()
}

/// The reader [`reading_as`] set on this thread, if any.
pub fn current() -> Option<Arc<Creds>> {
    STATE.with(|s| s.borrow().creds.clone())
}

/// Runs `f` with this thread's filesystem credentials switched to the reader
/// [`reading_as`] set (as is when none is set, or already switched). Errors
/// only when the switch itself fails.
pub fn as_reader<T>(f: impl FnOnce() -> T) -> io::Result<T> {
    let (creds, active) = STATE.with(|s| {
        let s = s.borrow();
        (s.creds.clone(), s.active)
    });
    match creds {
        Some(creds) if !active => {
            let _switched = Switched::enter(&creds)?;
            Ok(f())
        }
        _ => Ok(f()),
    }
}

/// This thread's fs credentials while switched; switching back on drop.
struct Switched {
    fsgid: u32,
    groups: Vec<u32>,
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn thread_groups() -> io::Result<Vec<u32>> {
    // SAFETY: getgroups(0, NULL) only returns the count.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(errno());
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: the buffer holds `n` gids.
    let got = unsafe { libc::syscall(libc::SYS_getgroups, n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(errno());
    }
    groups.truncate(got as usize);
    Ok(groups)
}

fn set_thread_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the raw system call changes this thread's groups only (glibc's
    // setgroups() would broadcast to every thread); the slice outlives it.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r < 0 {
        return Err(errno());
    }
    Ok(())
}

/// setfsuid/setfsgid never report failure; the value after a call with an
/// invalid id (-1) tells what is in effect.
fn fsuid_now() -> u32 {
    // SAFETY: plain system calls on this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 }
}

fn fsgid_now() -> u32 {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 }
}

impl Switched {
    fn enter(creds: &Creds) -> io::Result<Switched> {
        let groups = thread_groups()?;
        let fsgid = fsgid_now();
        let denied = |what: &str| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "cannot take the rights of uid {} to read its files ({what} refused: the daemon needs CAP_SETUID and CAP_SETGID)",
                    creds.uid
                ),
            )
        };
        set_thread_groups(&creds.groups).map_err(|_| denied("setgroups"))?;
        let switched = Switched { fsgid, groups };
        // SAFETY: per-thread system calls; checked below.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, creds.gid);
            libc::syscall(libc::SYS_setfsuid, creds.uid);
        }
        STATE.with(|s| s.borrow_mut().active = true);
        if fsgid_now() != creds.gid {
            return Err(denied("setfsgid"));
        }
        if fsuid_now() != creds.uid {
            return Err(denied("setfsuid"));
        }
        Ok(switched)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        // The daemon's own fs uid is its effective uid; going back to it
        // restores the filesystem capabilities.
        let euid = unsafe { libc::geteuid() };
        // SAFETY: per-thread system calls on this thread's credentials.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, euid);
            libc::syscall(libc::SYS_setfsgid, self.fsgid);
        }
        let restored = set_thread_groups(&self.groups).is_ok()
            && fsuid_now() == euid
            && fsgid_now() == self.fsgid;
        STATE.with(|s| s.borrow_mut().active = false);
        if !restored {
            // A pool thread left with a user's rights would do the daemon's
            // own work as that user: never continue.
            eprintln!("memobuildd: cannot restore a thread's credentials after reading as a user; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_with_the_users_rights_on_this_thread_only() {
        if unsafe { libc::geteuid() } != 0 {
            return; // needs root to switch
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = Arc::new(Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        });
        let denied = reading_as(Some(nobody.clone()), || {
            as_reader(|| std::fs::read(&secret)).unwrap()
        });
        assert_eq!(denied.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        // Another thread, reading while this one is switched, keeps root's rights.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let s = secret.clone();
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            std::fs::read(s)
        });
        reading_as(Some(nobody.clone()), || {
            as_reader(|| {
                go.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            })
            .unwrap()
        });
        assert_eq!(other.join().unwrap().unwrap(), b"root only");
        // And this thread has them back.
        assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
        assert!(current().is_none());
        // Group rights count.
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        nix::unistd::chown(&secret, None, Some(nix::unistd::Gid::from_raw(4242))).unwrap();
        let member = Arc::new(Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        });
        let read = reading_as(Some(member), || {
            as_reader(|| std::fs::read(&secret)).unwrap()
        });
        assert_eq!(read.unwrap(), b"root only");
    }
}
