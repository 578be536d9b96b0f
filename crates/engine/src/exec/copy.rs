//! Turning filesystem steps (COPY, ADD, WORKDIR) into a [`ChangeSet`] against the
//! parent's [`FsView`], with BuildKit's path rules: a directory source copies its
//! contents, a destination ending in `/` (or an existing directory) receives
//! files by name, missing parents are created, local archives are extracted by
//! ADD.
//!
//! Times as BuildKit keeps them: a copied entry has its source's mtime (the
//! context index's, the source stage's, an archive entry's, a download's
//! `Last-Modified`); what the step itself makes (directories it creates, a
//! WORKDIR, here-documents, a download without `Last-Modified`) has the
//! step's time, `now`. SOURCE_DATE_EPOCH clamps them later, for the layer and
//! the snapshot alike.

use super::fsview::{FsView, ViewKind};
use super::users;
use memobuild_context::dockerignore::DockerIgnore;
use memobuild_context::{ContextIndex, FileKind, FileMeta, Selected};
use memobuild_oci::layer::clean_entry_path;
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry, Node};
use memobuild_plan::{Chmod, CopyOp, CopySource};
use memobuild_store::Store;
use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    #[error("{0}")]
    User(#[from] users::UserError),
    #[error(transparent)]
    Oci(#[from] memobuild_oci::OciError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Source(String),
}

fn io_err(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> CopyError {
    let path = path.into();
    move |source| CopyError::Io { path, source }
}

/// Owner for new entries.
#[derive(Debug, Clone, Copy, Default)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// A directory memobuild creates itself, owned by `owner`, made at `mtime`.
fn dir_entry(owner: Owner, mode: u32, mtime: u64) -> LayerEntry {
    LayerEntry {
        kind: EntryKind::Dir,
        mode,
        uid: owner.uid,
        gid: owner.gid,
        mtime,
    }
}

/// Unix seconds of a context file's nanosecond mtime (before 1970: 0).
fn secs(mtime_ns: i64) -> u64 {
    u64::try_from(mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0)
}

struct Builder<'a> {
    view: &'a FsView,
    changes: ChangeSet,
    owner: Owner,
    /// True when `--chown` set `owner`.
    chown: bool,
    chmod: Option<Chmod>,
    /// `--exclude` patterns, matched against paths relative to each root.
    exclude: DockerIgnore,
    /// The step's time (Unix seconds): the mtime of what it makes itself.
    now: u64,
}

impl Builder<'_> {
    fn add(&mut self, path: String, kind: EntryKind, mode: u32, mtime: u64) {
        self.add_as(path, kind, mode, self.owner, mtime);
    }

    /// [`Builder::add`] with an explicit owner (`COPY --from` keeps the source's).
    fn add_as(&mut self, path: String, kind: EntryKind, mode: u32, owner: Owner, mtime: u64) {
        // --chmod applies to every copied entry but symlinks (which are 0777).
        let mode = match (&kind, &self.chmod) {
            (EntryKind::Symlink(_), _) => 0o777,
            (_, Some(c)) => c.apply(mode, kind == EntryKind::Dir),
            _ => mode,
        };
        self.changes.insert(
            path,
            LayerEntry {
                kind,
                mode,
                uid: owner.uid,
                gid: owner.gid,
                mtime,
            },
        );
    }

    /// The mode of the directories COPY creates itself: an octal --chmod, else
    /// 0755 (BuildKit's fsutil `MkdirAll(dest, mode)`).
    fn created_dir_mode(&self) -> u32 {
        self.chmod.as_ref().map_or(0o755, Chmod::created_dir_mode)
    }

    /// A directory COPY itself creates: the new owner (the --chown owner,
    /// else 0:0) and [`Builder::created_dir_mode`], never the source's.
    fn add_created_dir(&mut self, path: String) {
        let mode = self.created_dir_mode();
        self.changes
            .insert(path, dir_entry(self.owner, mode, self.now));
    }

    /// Creates missing parent directories of every entry, as
    /// [`Builder::add_created_dir`] does.
    fn add_missing_parents(&mut self) {
        let mode = self.created_dir_mode();
        self.add_missing_dirs("", self.owner, mode);
    }

    /// Creates, as directories owned by `owner` with `mode`, every missing
    /// ancestor of an entry that lies strictly below `floor` (all ancestors for `""`).
    fn add_missing_dirs(&mut self, floor: &str, owner: Owner, mode: u32) {
        let prefix = if floor.is_empty() {
            String::new()
        } else {
            format!("{floor}/")
        };
        let mut missing = Vec::new();
        for path in self
            .changes
            .entries
            .keys()
            .filter(|p| p.starts_with(&prefix))
        {
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                parent = p;
                if parent.len() <= floor.len() {
                    break;
                }
                if !self.view.exists(parent) && !self.changes.entries.contains_key(parent) {
                    missing.push(parent.to_string());
                }
            }
        }
        for dir in missing {
            self.changes.insert(dir, dir_entry(owner, mode, self.now));
        }
    }
}

/// `WORKDIR path`: the directory and its missing parents, owned by the
/// stage's user, made at `now`.
pub(crate) fn workdir(
    path: &str,
    user: Option<&str>,
    view: &FsView,
    store: &Store,
    now: u64,
) -> Result<ChangeSet, CopyError> {
    let rel = clean_entry_path(path);
    let resolved = view.resolve(&rel).unwrap_or(rel);
    if view.is_dir(&resolved) {
        return Ok(ChangeSet::default());
    }
    let (uid, gid) = match user {
        Some(u) => users::resolve(u, view, store)?,
        None => (0, 0),
    };
    let mut b = Builder {
        view,
        changes: ChangeSet::default(),
        owner: Owner { uid, gid },
        chown: true,
        chmod: None,
        exclude: DockerIgnore::empty(),
        now,
    };
    b.add(resolved, EntryKind::Dir, 0o755, now);
    b.add_missing_parents();
    Ok(b.changes)
}

/// What a COPY/ADD step adds. `source_view` is the `--from` stage's
/// filesystem; `now` the step's time (see the module's note on times).
pub(crate) fn copy(
    op: &CopyOp,
    view: &FsView,
    source_view: Option<&FsView>,
    store: &Store,
    staging: &Path,
    now: u64,
) -> Result<ChangeSet, CopyError> {
    let owner = match &op.chown {
        Some(spec) => {
            let (uid, gid) = users::resolve(spec, view, store)?;
            Owner { uid, gid }
        }
        None => Owner::default(),
    };
    let mut b = Builder {
        view,
        changes: ChangeSet::default(),
        owner,
        chown: op.chown.is_some(),
        chmod: op.chmod.clone(),
        exclude: patterns(&op.exclude.join("\n"))?,
        now,
    };
    let dest_named_dir = op.dest.ends_with('/');
    let dest = resolve_dest(view, &op.dest);
    match &op.source {
        CopySource::Context {
            index,
            roots,
            digests,
        } => {
            let source = ContextSource { index, digests };
            for (i, root) in roots.iter().enumerate() {
                match op.root_patterns.get(i) {
                    Some(pattern) if op.parents => {
                        copy_context_parents(&mut b, &source, root, pattern, &dest)?
                    }
                    _ => copy_context_root(
                        &mut b,
                        op,
                        &source,
                        root,
                        &dest,
                        dest_named_dir,
                        staging,
                    )?,
                }
            }
        }
        CopySource::Url { files } => {
            for file in files {
                if op.add && is_archive(&file.fetched.path)? {
                    extract_archive(&mut b, &file.fetched.path, &dest, staging)?;
                    continue;
                }
                let target = file_target(view, &dest, dest_named_dir, &file.name);
                // BuildKit's HTTP source writes 0600; --chmod/--chown apply;
                // the time is the response's Last-Modified, else the step's.
                let mtime = file.fetched.modified.map_or(now, |t| t.max(0) as u64);
                b.add(
                    target,
                    EntryKind::File(Content::Path(file.fetched.path.clone())),
                    0o600,
                    mtime,
                );
            }
        }
        CopySource::Git { tree, subdir } => {
            copy_git_tree(&mut b, &tree.dir.join(subdir), &dest)?;
        }
        CopySource::Stage { paths, .. } => {
            let source_view = source_view.ok_or_else(|| {
                CopyError::Source("internal: COPY --from without its stage".into())
            })?;
            copy_from_view(
                &mut b,
                source_view,
                paths,
                op.parents,
                &dest,
                dest_named_dir,
                store,
                staging,
            )?;
        }
    }
    // Here-documents: files named after their delimiters, 0644 (BuildKit's
    // Mkfile of an inline document, then a copy with --chown/--chmod).
    for (name, content) in &op.inline {
        let target = file_target(view, &dest, dest_named_dir, name);
        b.add(
            target,
            EntryKind::File(Content::Bytes(content.clone())),
            0o644,
            now,
        );
    }
    b.add_missing_parents();
    Ok(b.changes)
}

/// `ADD REPO#REF`: the checkout's tree into the destination directory, owned
/// by the `--chown` owner (else 0:0), modes as checked out.
fn copy_git_tree(b: &mut Builder<'_>, root: &Path, dest: &str) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    if !b.view.is_dir(dest) && !dest.is_empty() {
        b.add_created_dir(dest.to_string());
    }
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| CopyError::Source(format!("reading the checkout: {e}")))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|e| CopyError::Source(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if b.exclude.is_excluded(&rel) {
            continue;
        }
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(io_err(entry.path().display().to_string()))?;
        let kind = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())
                .map_err(io_err(entry.path().display().to_string()))?;
            EntryKind::Symlink(target.to_string_lossy().into_owned())
        } else if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File(Content::Path(entry.path().to_path_buf()))
        } else {
            continue;
        };
        let mtime = std::os::unix::fs::MetadataExt::mtime(&meta).max(0) as u64;
        b.add(
            join(dest, &rel),
            kind,
            meta.permissions().mode() & 0o7777,
            mtime,
        );
    }
    Ok(())
}

/// Patterns in .dockerignore syntax (`--exclude`, a `--parents` pattern).
fn patterns(text: &str) -> Result<DockerIgnore, CopyError> {
    DockerIgnore::parse(text)
        .map_err(|e| CopyError::Source(format!("pattern {:?}: {}", e.pattern, e.message)))
}

/// The ancestors of `rel` (a relative path), nearest last: `a/b/c` -> `a`, `a/b`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// `COPY --parents` of a context root: the entries below it that `pattern`
/// selects (or lies below), with their directories, at their path relative to
/// the root under `dest`.
fn copy_context_parents(
    b: &mut Builder<'_>,
    source: &ContextSource<'_>,
    root: &Selected,
    pattern: &str,
    dest: &str,
) -> Result<(), CopyError> {
    let ContextSource { index, digests } = source;
    if !b.view.is_dir(dest) && !dest.is_empty() {
        b.add_created_dir(dest.to_string());
    }
    if root.meta.kind != FileKind::Dir {
        return Ok(());
    }
    let include = patterns(pattern)?;
    let prefix_len = if root.rel.is_empty() {
        0
    } else {
        root.rel.len() + 1
    };
    let mut dirs = std::collections::BTreeSet::new();
    for (path, meta) in index.below(&root.rel) {
        let rel = &path[prefix_len..];
        if !include.is_excluded(rel) || b.exclude.is_excluded(rel) {
            continue;
        }
        dirs.extend(ancestors(rel).map(String::from));
        add_context_entry(b, index, digests, path, meta, join(dest, rel));
    }
    for dir in dirs {
        let path = join(&root.rel, &dir);
        if let Some(meta) = index.get(&path) {
            add_context_entry(b, index, digests, &path, meta, join(dest, &dir));
        }
    }
    Ok(())
}

/// The destination as a path in the view, following symlinks in every
/// component, the last one too (BuildKit's fsutil copy resolves the whole
/// destination with the stage's root as `/`): `COPY foo /link/` with
/// `/link -> ../tmp/x` writes /tmp/x/foo, creating /tmp/x if missing.
fn resolve_dest(view: &FsView, dest: &str) -> String {
    let rel = clean_entry_path(dest);
    view.resolve(&rel).unwrap_or(rel)
}

fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => dir.to_string(),
        _ => format!("{dir}/{name}"),
    }
}

/// Where a single non-directory source lands.
fn file_target(view: &FsView, dest: &str, dest_named_dir: bool, name: &str) -> String {
    if dest_named_dir || view.is_dir(dest) {
        join(dest, name)
    } else {
        dest.to_string()
    }
}

/// The build context as a COPY reads it: its files and the hashes its key used.
struct ContextSource<'a> {
    index: &'a ContextIndex,
    digests: &'a std::collections::BTreeMap<String, [u8; 32]>,
}

fn copy_context_root(
    b: &mut Builder<'_>,
    op: &CopyOp,
    source: &ContextSource<'_>,
    root: &Selected,
    dest: &str,
    dest_named_dir: bool,
    staging: &Path,
) -> Result<(), CopyError> {
    let ContextSource { index, digests } = source;
    match root.meta.kind {
        FileKind::Dir => {
            // A new destination directory is 0755, not the source's mode (BuildKit).
            if !b.view.is_dir(dest) && !dest.is_empty() {
                b.add_created_dir(dest.to_string());
            }
            let prefix_len = if root.rel.is_empty() {
                0
            } else {
                root.rel.len() + 1
            };
            for (path, meta) in index.below(&root.rel) {
                if b.exclude.is_excluded(&path[prefix_len..]) {
                    continue;
                }
                let target = join(dest, &path[prefix_len..]);
                add_context_entry(b, index, digests, path, meta, target);
            }
            Ok(())
        }
        _ if b.exclude.is_excluded(&root.name) => Ok(()),
        FileKind::File if op.add && is_archive(&index.host_path(&root.rel))? => {
            extract_archive(b, &index.host_path(&root.rel), dest, staging)
        }
        _ => {
            let target = file_target(b.view, dest, dest_named_dir, &root.name);
            add_context_entry(b, index, digests, &root.rel, &root.meta, target);
            Ok(())
        }
    }
}

fn add_context_entry(
    b: &mut Builder<'_>,
    index: &ContextIndex,
    digests: &std::collections::BTreeMap<String, [u8; 32]>,
    rel: &str,
    meta: &FileMeta,
    target: String,
) {
    // The layer must hold the bytes the cache key was computed from.
    let kind = match meta.kind {
        FileKind::File => EntryKind::File(match digests.get(rel) {
            Some(blake3) => Content::Checked {
                path: index.host_path(rel),
                blake3: *blake3,
            },
            None => Content::Path(index.host_path(rel)),
        }),
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink => {
            EntryKind::Symlink(meta.link_target.as_deref().unwrap_or_default().to_string())
        }
        // What BuildKit's context transfer makes of a socket: an empty file.
        FileKind::Socket => EntryKind::File(Content::Bytes(Vec::new())),
        // FIFOs and devices as such, as BuildKit's copy makes them (mknod).
        FileKind::Fifo => EntryKind::Node(Node::Fifo),
        FileKind::CharDevice | FileKind::BlockDevice => {
            let (major, minor) = meta.device_numbers().unwrap_or_default();
            EntryKind::Node(if meta.kind == FileKind::CharDevice {
                Node::CharDevice { major, minor }
            } else {
                Node::BlockDevice { major, minor }
            })
        }
        // The plan refused a name that is not UTF-8 already.
        FileKind::NotUtf8 => return,
    };
    b.add(target, kind, meta.mode, secs(meta.mtime_ns));
}

/// One thing `COPY --from` puts in the layer.
enum FromItem {
    /// The destination directory, which COPY creates itself.
    NewDir(String),
    /// `source` (a path in the source stage) copied to `target`.
    Entry { source: String, target: String },
}

#[allow(clippy::too_many_arguments)]
fn copy_from_view(
    b: &mut Builder<'_>,
    source: &FsView,
    paths: &[String],
    parents: bool,
    dest: &str,
    dest_named_dir: bool,
    store: &Store,
    staging: &Path,
) -> Result<(), CopyError> {
    let mut items = Vec::new();
    for raw in paths {
        if parents {
            parents_from_view(b, source, raw, dest, &mut items)?;
            continue;
        }
        let rel = clean_entry_path(raw);
        let roots = select_in_view(source, &rel)
            .ok_or_else(|| CopyError::Source(format!("{raw:?} not found in the source stage")))?;
        for (path, name) in roots {
            let is_dir = path.is_empty()
                || matches!(source.get(&path).map(|e| &e.kind), Some(ViewKind::Dir));
            if !is_dir {
                if b.exclude.is_excluded(&name) {
                    continue;
                }
                let target = file_target(b.view, dest, dest_named_dir, &name);
                items.push(FromItem::Entry {
                    source: path,
                    target,
                });
                continue;
            }
            if !b.view.is_dir(dest) && !dest.is_empty() {
                items.push(FromItem::NewDir(dest.to_string()));
            }
            let prefix_len = if path.is_empty() { 0 } else { path.len() + 1 };
            for (p, _) in source.below(&path) {
                if b.exclude.is_excluded(&p[prefix_len..]) {
                    continue;
                }
                let target = join(dest, &p[prefix_len..]);
                items.push(FromItem::Entry {
                    source: p.clone(),
                    target,
                });
            }
        }
    }
    let files: Vec<String> = items
        .iter()
        .filter_map(|item| match item {
            FromItem::Entry { source: p, .. }
                if matches!(source.get(p).map(|e| &e.kind), Some(ViewKind::File)) =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect();
    let staged = source.extract(store, &files, staging)?;
    for item in items {
        let (path, target) = match item {
            FromItem::NewDir(target) => {
                b.add_created_dir(target);
                continue;
            }
            FromItem::Entry { source, target } => (source, target),
        };
        let Some(entry) = source.get(&path) else {
            continue;
        };
        // COPY --from keeps the source's owners unless --chown says otherwise.
        let owner = if b.chown {
            b.owner
        } else {
            Owner {
                uid: entry.uid,
                gid: entry.gid,
            }
        };
        let kind = match &entry.kind {
            ViewKind::File => match staged.get(&path) {
                Some(p) => EntryKind::File(Content::Path(p.clone())),
                None => continue,
            },
            ViewKind::Dir => EntryKind::Dir,
            ViewKind::Symlink(t) => EntryKind::Symlink(t.clone()),
            ViewKind::Hardlink(t) => EntryKind::Hardlink(t.clone()),
            ViewKind::Node(node) => EntryKind::Node(*node),
            ViewKind::Other => continue,
        };
        b.add_as(target, kind, entry.mode, owner, entry.mtime);
    }
    Ok(())
}

/// Roots a `--from` source selects: (path in view, name it was asked by).
/// `COPY --from --parents RAW`: as [`copy_context_parents`], the root and
/// pattern split at the first `/./`; a path without wildcards must exist.
fn parents_from_view(
    b: &Builder<'_>,
    source: &FsView,
    raw: &str,
    dest: &str,
    items: &mut Vec<FromItem>,
) -> Result<(), CopyError> {
    let (root, pattern) = memobuild_plan::split_parents(raw);
    let wildcard = |s: &str| s.contains(['*', '?', '[']);
    let required = clean_entry_path(&format!("{root}/{pattern}"));
    if !wildcard(root) && !wildcard(pattern) && select_in_view(source, &required).is_none() {
        return Err(CopyError::Source(format!(
            "\"/{required}\": not found in the source stage"
        )));
    }
    if !b.view.is_dir(dest) && !dest.is_empty() {
        items.push(FromItem::NewDir(dest.to_string()));
    }
    let root = clean_entry_path(root);
    let roots = if root.is_empty() {
        vec![(String::new(), String::new())]
    } else {
        select_in_view(source, &root).unwrap_or_default()
    };
    let include = patterns(pattern)?;
    for (path, _) in roots {
        if !(path.is_empty() || matches!(source.get(&path).map(|e| &e.kind), Some(ViewKind::Dir))) {
            continue;
        }
        let prefix_len = if path.is_empty() { 0 } else { path.len() + 1 };
        let mut dirs = std::collections::BTreeSet::new();
        for (p, _) in source.below(&path) {
            let rel = &p[prefix_len..];
            if !include.is_excluded(rel) || b.exclude.is_excluded(rel) {
                continue;
            }
            dirs.extend(ancestors(rel).map(String::from));
            items.push(FromItem::Entry {
                source: p.clone(),
                target: join(dest, rel),
            });
        }
        for dir in dirs {
            items.push(FromItem::Entry {
                source: join(&path, &dir),
                target: join(dest, &dir),
            });
        }
    }
    Ok(())
}

pub(crate) fn select_in_view(view: &FsView, rel: &str) -> Option<Vec<(String, String)>> {
    if !rel.contains(['*', '?', '[']) {
        let resolved = view.resolve(rel)?;
        if !view.exists(&resolved) {
            return None;
        }
        let name = rel.rsplit('/').next().unwrap_or("").to_string();
        return Some(vec![(resolved, name)]);
    }
    let glob = globset::GlobBuilder::new(rel)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .ok()?
        .compile_matcher();
    let found: Vec<(String, String)> = view
        .entries
        .keys()
        .filter(|p| glob.is_match(p))
        .map(|p| (p.clone(), p.rsplit('/').next().unwrap_or("").to_string()))
        .collect();
    (!found.is_empty()).then_some(found)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
}

fn sniff(path: &Path) -> Result<Option<Compression>, CopyError> {
    let mut head = [0u8; 512];
    let mut file = memobuild_rootpath::safefs::open_regular(path, false)
        .map(|(f, _)| f)
        .map_err(|e| io_err(path.display().to_string())(e.into()))?;
    let mut n = 0;
    while n < head.len() {
        let read = file
            .read(&mut head[n..])
            .map_err(io_err(path.display().to_string()))?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Compression::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Compression::Xz)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Some(Compression::None)
    } else {
        None
    })
}

/// True for a file ADD extracts: a tar, possibly compressed, that reads as one.
fn is_archive(path: &Path) -> Result<bool, CopyError> {
    let Some(compression) = sniff(path)? else {
        return Ok(false);
    };
    if compression == Compression::None {
        return Ok(true);
    }
    // A compressed file that is not a tar (a plain .gz) is copied, not extracted.
    let mut reader = decompressor(path, compression)?;
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < 512 {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return Ok(false),
        }
    }
    Ok(n >= 262 && &head[257..262] == b"ustar"
        || (n == 512 && tar::Header::from_byte_slice(&head).cksum().is_ok()))
}

/// The newest mtime of a regular file in the archive at `path` (a tar,
/// possibly compressed); `None` when it is not one or has no regular file
/// (BuildKit's archiveMaxTimeFromRef, for a SOURCE_DATE_EPOCH stage).
pub(crate) fn archive_max_mtime(path: &Path) -> Option<i64> {
    if !is_archive(path).ok()? {
        return None;
    }
    let compression = sniff(path).ok()??;
    let mut archive = tar::Archive::new(decompressor(path, compression).ok()?);
    let mut newest: Option<i64> = None;
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        let header = entry.header();
        if !matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let mtime = i64::try_from(header.mtime().ok()?).ok()?;
        newest = Some(newest.map_or(mtime, |n| n.max(mtime)));
    }
    newest
}

fn decompressor(path: &Path, compression: Compression) -> Result<Box<dyn Read>, CopyError> {
    let file = std::io::BufReader::new(
        memobuild_rootpath::safefs::open_regular(path, false)
            .map(|(f, _)| f)
            .map_err(|e| io_err(path.display().to_string())(e.into()))?,
    );
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
    })
}

/// The target of the symlink at `rel` (below `dest`), made by this archive
/// (`changes`) or already in the image (`view`).
fn link_below(b: &Builder<'_>, dest: &str, rel: &str) -> Option<String> {
    let full = join(dest, rel);
    match b.changes.entries.get(&full) {
        Some(entry) => match &entry.kind {
            EntryKind::Symlink(target) => Some(target.clone()),
            _ => None,
        },
        None => match b.view.get(&full).map(|e| &e.kind) {
            Some(ViewKind::Symlink(target)) => Some(target.clone()),
            _ => None,
        },
    }
}

/// `rel` (a cleaned archive path) with its parent resolved through the
/// symlinks below `dest`, `dest` standing in for `/` (as BuildKit's unpack,
/// chrooted into the destination): `esc -> /host` then `esc/f` gives `host/f`,
/// so no entry lies below a symlink and none can leave `dest`.
fn resolve_in_dest(b: &Builder<'_>, dest: &str, rel: &str) -> Option<String> {
    match rel.rsplit_once('/') {
        None => Some(rel.to_string()),
        Some((parent, name)) => {
            let parent = memobuild_rootpath::resolve(parent, |p| link_below(b, dest, p))?;
            Some(join(&parent, name))
        }
    }
}

/// `path` with its parent directory resolved through the view's symlinks
/// (the last component is the entry itself, never followed): where the
/// stage's own symlinks above the destination lead (`/var/run -> /run`).
fn through_symlinks(view: &FsView, path: &str) -> String {
    match path.rsplit_once('/') {
        Some((parent, name)) => join(
            &view.resolve(parent).unwrap_or_else(|| parent.to_string()),
            name,
        ),
        None => path.to_string(),
    }
}

/// ADD of a local archive: its entries land under `dest` with their own modes and
/// owners. Entry names are cleaned (`../` and a leading `/` cannot leave
/// `dest`), parents are resolved through the archive's own symlinks inside
/// `dest` ([`resolve_in_dest`]); a hard link to anything but a file already
/// extracted (or already in the image below `dest`) is refused, as BuildKit's
/// unpack refuses it. Symlinks are kept as they are (BuildKit keeps
/// `x -> ../tmp/y` too): what lands below them is resolved inside `dest`.
fn extract_archive(
    b: &mut Builder<'_>,
    path: &Path,
    dest: &str,
    staging: &Path,
) -> Result<(), CopyError> {
    let compression = sniff(path)?.unwrap_or(Compression::None);
    let mut archive = tar::Archive::new(decompressor(path, compression)?);
    let name = path.display().to_string();
    for (i, entry) in archive.entries().map_err(io_err(&name))?.enumerate() {
        let mut entry = entry.map_err(io_err(&name))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = clean_entry_path(&raw);
        if rel.is_empty() {
            continue;
        }
        let rel = resolve_in_dest(b, dest, &rel).ok_or_else(|| {
            CopyError::Source(format!(
                "{name}: archive entry {raw:?}: too many levels of symbolic links"
            ))
        })?;
        if rel.is_empty() {
            continue;
        }
        let header = entry.header().clone();
        let mode = header.mode().map_err(io_err(&name))? & 0o7777;
        let uid = header.uid().map_err(io_err(&name))? as u32;
        let gid = header.gid().map_err(io_err(&name))? as u32;
        let mtime = header.mtime().map_err(io_err(&name))?;
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(link),
            tar::EntryType::Link => {
                let target = resolve_in_dest(b, dest, &clean_entry_path(&link))
                    .map(|t| join(dest, &t))
                    .filter(|t| {
                        let file = |k: &EntryKind| {
                            matches!(k, EntryKind::File(_) | EntryKind::Hardlink(_))
                        };
                        match b.changes.entries.get(t) {
                            Some(e) => file(&e.kind),
                            None => matches!(
                                b.view.get(t).map(|e| &e.kind),
                                Some(ViewKind::File | ViewKind::Hardlink(_))
                            ),
                        }
                    })
                    .ok_or_else(|| {
                        CopyError::Source(format!(
                            "{name}: invalid hard link {raw:?} -> {link:?}: no such file earlier in the archive or under the ADD destination"
                        ))
                    })?;
                EntryKind::Hardlink(target)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let file = staging.join(format!("add-{}-{i}", b.changes.entries.len()));
                let mut out = std::fs::File::create(&file).map_err(io_err(&name))?;
                std::io::copy(&mut entry, &mut out).map_err(io_err(&name))?;
                EntryKind::File(Content::Path(file))
            }
            _ => continue,
        };
        // Extracted entries keep the archive's modes and owners; --chown
        // owns every entry the archive has (BuildKit's untar ChownOpts), and
        // --chmod does not apply to them.
        let (uid, gid) = if b.chown {
            (b.owner.uid, b.owner.gid)
        } else {
            (uid, gid)
        };
        // Written where the stage's symlinks lead (BuildKit untars in a
        // chroot of the destination): `var/run/x` with `/var/run -> /run`
        // lands at run/x.
        b.changes.insert(
            through_symlinks(b.view, &join(dest, &rel)),
            LayerEntry {
                kind,
                mode,
                uid,
                gid,
                mtime,
            },
        );
    }
    // Directories the archive implies but does not contain come out 0755 and
    // owned by root, whatever --chown says (BuildKit).
    b.add_missing_dirs(dest, Owner::default(), 0o755);
    Ok(())
}
