//! Micro-benchmarks of memobuildd's engine pieces, through its library:
//! Dockerfile parsing, word expansion, `.dockerignore` matching, context
//! scanning and content hashing. See docs/PERFORMANCE.md.
//!
//! Run: `cargo bench --bench micro` (a filter narrows it, e.g.
//! `cargo bench --bench micro -- hash`). Fixtures live in a temp dir under
//! /tmp that is removed at the end.

mod common;

use criterion::{black_box, BatchSize, Criterion, SamplingMode, Throughput};
use memobuild_context::dockerignore::DockerIgnore;
use memobuild_context::{ContextIndex, FileKind, FileMeta, HashCache};
use memobuild_dockerfile::expand::expand_word;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// A realistic multi-stage Dockerfile of exactly 200 lines: comments, ARG/ENV
/// with variables, LABELs, COPY with flags, continuations, RUN, metadata.
fn dockerfile_200() -> String {
    let mut lines: Vec<String> = vec![
        "# syntax=docker/dockerfile:1".into(),
        "ARG BASE=scratch".into(),
        "ARG VERSION=1.2.3".into(),
    ];
    let mut stage = 0;
    // Each stage below is 26 physical lines.
    while lines
        .iter()
        .map(|l| l.lines().count().max(1))
        .sum::<usize>()
        + 26
        <= 200
    {
        let name = format!("stage{stage}");
        lines.push(String::new());
        lines.push(format!("# stage {stage}"));
        lines.push(if stage == 0 {
            format!("FROM ${{BASE}} AS {name}")
        } else {
            format!("FROM stage{} AS {name}", stage - 1)
        });
        lines.push(format!("ARG VERSION\nENV APP_HOME=/opt/app{stage} \\\n    APP_VERSION=${{VERSION}} \\\n    PATH=/opt/app{stage}/bin:$PATH"));
        lines.push(format!(
            "LABEL org.opencontainers.image.version=\"${{VERSION}}\" stage=\"{name}\""
        ));
        lines.push("WORKDIR ${APP_HOME}".into());
        for i in 0..6 {
            lines.push(format!(
                "COPY --chown=1000:1000 --chmod=0644 src/mod{i}/ ${{APP_HOME}}/src/mod{i}/"
            ));
        }
        lines.push("COPY [\"config/app.toml\", \"config/log.toml\", \"/etc/app/\"]".into());
        lines.push(format!(
            "RUN make -C ${{APP_HOME}} \\\n    VERSION=${{VERSION%%.*}} \\\n    STAGE={stage}"
        ));
        lines.push("USER 1000:1000".into());
        lines.push("EXPOSE 8080/tcp 9090/udp".into());
        lines.push("VOLUME [\"/data\"]".into());
        lines.push("HEALTHCHECK --interval=30s --timeout=3s CMD [\"/opt/app/bin/health\"]".into());
        lines.push("ENTRYPOINT [\"/opt/app/bin/app\"]".into());
        lines.push("CMD [\"--serve\", \"--port=8080\"]".into());
        stage += 1;
    }
    let mut text = lines.join("\n");
    let count = text.lines().count();
    for i in count..200 {
        text.push_str(&format!("\n# padding {i}"));
    }
    text.push('\n');
    text
}

fn expand_cases() -> Vec<(&'static str, &'static str)> {
    vec![
        ("plain", "/usr/local/bin/app"),
        ("simple_vars", "$APP_HOME/bin:${PATH}"),
        (
            "quoted_mixed",
            "\"${APP_HOME}/etc\"/'$literal'/\\$escaped/${USER:-root}",
        ),
        (
            "operators",
            "${VERSION%%.*}-${VERSION#*.}-${NAME/foo/bar}-${MISSING:-${FALLBACK:+set}}",
        ),
    ]
}

const IGNORE: &str = "\
# typical project .dockerignore
.git
**/.DS_Store
**/*.log
!important.log
target/
node_modules
**/node_modules
*.tmp
build/**/*.o
docs/**/*.md
!docs/README.md
**/__pycache__
*.py[co]
coverage
.env*
d[0-3]/s9/*.bin
**/tmp?/**
vendor/**
!vendor/keep/**
";

fn ignore_paths(n: usize) -> Vec<String> {
    let mut rng = common::Rng::new(7);
    let dirs = [
        "src",
        "docs/api",
        "node_modules/x",
        "target/release",
        "d1/s9",
        "d7/s2",
        "build/obj",
        "vendor/keep",
        "a/b/c/d/e",
        "tmp1/x",
    ];
    let names = [
        "main.rs",
        "README.md",
        "app.log",
        "important.log",
        "x.pyc",
        "cache.tmp",
        "f.bin",
        "lib.o",
        ".env.local",
        "index.js",
    ];
    (0..n)
        .map(|i| {
            let d = dirs[rng.below(dirs.len() as u64) as usize];
            let f = names[rng.below(names.len() as u64) as usize];
            format!("{d}/{i}/{f}")
        })
        .collect()
}

fn all_benches(c: &mut Criterion) {
    // --- Dockerfile parsing --------------------------------------------------
    let text = dockerfile_200();
    assert_eq!(text.lines().count(), 200);
    let parsed =
        memobuild_dockerfile::parse(&text, "Dockerfile").expect("benchmark Dockerfile parses");
    assert_eq!(parsed.stages.len(), 7);
    let mut g = c.benchmark_group("dockerfile");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse_200_lines", |b| {
        b.iter(|| memobuild_dockerfile::parse(black_box(&text), "Dockerfile").unwrap())
    });
    g.finish();

    // --- Word expansion -------------------------------------------------------
    let vars: BTreeMap<String, String> = [
        ("APP_HOME", "/opt/app"),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("VERSION", "1.22.3"),
        ("NAME", "foofoo"),
        ("FALLBACK", "x"),
        ("USER", "app"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut g = c.benchmark_group("expand_word");
    for (name, word) in expand_cases() {
        expand_word(word, &vars, '\\').expect("benchmark word expands");
        g.bench_function(name, |b| {
            b.iter(|| expand_word(black_box(word), &vars, '\\').unwrap())
        });
    }
    g.finish();

    // --- .dockerignore ----------------------------------------------------------
    let paths = ignore_paths(10_000);
    let ignore = DockerIgnore::parse(IGNORE).expect("benchmark .dockerignore parses");
    let excluded = paths.iter().filter(|p| ignore.is_excluded(p)).count();
    assert!(
        excluded > 0 && excluded < paths.len(),
        "{excluded} excluded"
    );
    let mut g = c.benchmark_group("dockerignore");
    g.bench_function("parse_20_patterns", |b| {
        b.iter(|| DockerIgnore::parse(black_box(IGNORE)).unwrap())
    });
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function("is_excluded_10k_paths", |b| {
        b.iter(|| {
            paths
                .iter()
                .filter(|p| ignore.is_excluded(black_box(p)))
                .count()
        })
    });
    g.finish();

    // --- Context fixture: 10,000 files, 100 MB, 100 directories -------------
    let files: usize = std::env::var("MEMOBUILD_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let total = files as u64 * 10_000;
    let dir = tempfile::Builder::new()
        .prefix("memobuild-micro-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let root = dir.path().join("ctx");
    std::fs::create_dir(&root).unwrap();
    let plan = common::generate_tree(&root, files, total, 42).expect("generate context");
    // Age every file past the hash cache's racy window (2 s) so the warm-cache
    // benchmark really hits the cache.
    let old = SystemTime::now() - Duration::from_secs(3600);
    for f in &plan {
        std::fs::File::options()
            .write(true)
            .open(root.join(&f.rel))
            .and_then(|h| h.set_modified(old))
            .expect("set mtime");
    }

    let mut g = c.benchmark_group("context");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(files as u64));
    g.bench_function(format!("scan_{files}_files"), |b| {
        b.iter(|| ContextIndex::scan(black_box(&root), &DockerIgnore::empty()).unwrap())
    });
    // The same walk with the 20-pattern .dockerignore above (excludes d[0-3]/s9/*.bin).
    g.bench_function(format!("scan_{files}_files_with_dockerignore"), |b| {
        b.iter(|| ContextIndex::scan(black_box(&root), &ignore).unwrap())
    });
    g.finish();

    let index = ContextIndex::scan(&root, &DockerIgnore::empty()).unwrap();
    let hash_input: Vec<(PathBuf, FileMeta)> = index
        .iter()
        .filter(|(_, m)| m.kind == FileKind::File)
        .map(|(rel, m)| (index.host_path(rel), m.clone()))
        .collect();
    assert_eq!(hash_input.len(), files);
    let bytes: u64 = hash_input.iter().map(|(_, m)| m.size).sum();
    let mut g = c.benchmark_group("hash");
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Bytes(bytes));
    // Empty cache every iteration: every byte is read and hashed (page cache warm).
    g.bench_function(format!("hash_all_cold_{}MB", bytes / 1_000_000), |b| {
        b.iter_batched(
            HashCache::new,
            |cache| {
                let d = cache.hash_all(black_box(&hash_input)).unwrap();
                assert_eq!(cache.bytes_hashed(), bytes);
                d
            },
            BatchSize::PerIteration,
        )
    });
    // Every file already in the cache: only the stat-key lookups.
    let warm = HashCache::new();
    warm.hash_all(&hash_input).unwrap();
    g.throughput(Throughput::Elements(files as u64));
    g.bench_function(format!("hash_all_warm_{files}_files"), |b| {
        b.iter(|| warm.hash_all(black_box(&hash_input)).unwrap())
    });
    assert_eq!(
        warm.bytes_hashed(),
        bytes,
        "the warm benchmark re-hashed files"
    );
    g.throughput(Throughput::Bytes(bytes));
    // The same bytes through blake3 alone, one file after another on one thread
    // (no cache, no threads): what the hashing itself costs.
    g.bench_function("blake3_single_thread_reference", |b| {
        b.iter(|| {
            for (p, _) in &hash_input {
                let data = std::fs::read(p).unwrap();
                black_box(blake3::hash(&data));
            }
        })
    });
    g.finish();

    // --- Layers: the whole context as one COPY layer ---------------------------
    // Cold: a new LayerWriter every time (every gzip member compressed, on all
    // cores). Warm: the writer has written both versions of the layer before
    // (one file differs), so every member is copied from an earlier blob: what
    // an edit of one file costs, less one small member's compression.
    let layer_dir = tempfile::tempdir().expect("temp dir");
    let blobs = memobuild_store::BlobStore::open(layer_dir.path()).expect("blob store");
    let mut changes = memobuild_oci::ChangeSet::default();
    for (path, meta) in &hash_input {
        let blake3 = *blake3::hash(&std::fs::read(path).unwrap()).as_bytes();
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let entry = memobuild_oci::LayerEntry {
            kind: memobuild_oci::EntryKind::File(memobuild_oci::Content::Checked {
                path: path.clone(),
                blake3,
            }),
            mode: meta.mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        changes.insert(format!("app/{rel}"), entry);
    }
    let mut edited = changes.clone();
    let bytes_entry = memobuild_oci::LayerEntry {
        kind: memobuild_oci::EntryKind::File(memobuild_oci::Content::Bytes(b"edited\n".to_vec())),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    edited.insert("app/edited.txt".into(), bytes_entry);
    let mut g = c.benchmark_group("layer");
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("write_cold_{}MB", bytes / 1_000_000), |b| {
        b.iter(|| {
            memobuild_oci::LayerWriter::new()
                .write(black_box(&changes), &blobs)
                .unwrap()
        })
    });
    let warm_writer = memobuild_oci::LayerWriter::new();
    warm_writer.write(&changes, &blobs).unwrap();
    warm_writer.write(&edited, &blobs).unwrap();
    let mut flip = false;
    g.bench_function(
        format!("write_warm_{}MB_one_file_changed", bytes / 1_000_000),
        |b| {
            b.iter(|| {
                flip = !flip;
                let which = if flip { &edited } else { &changes };
                warm_writer.write(black_box(which), &blobs).unwrap()
            })
        },
    );
    // A trivial RUN's layer: one new small file, other bytes every time (so a
    // blob is written and fsynced on each iteration, as after a re-run).
    let mut nonce = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("write_one_small_file", |b| {
        b.iter(|| {
            nonce += 1;
            let mut one = memobuild_oci::ChangeSet::default();
            one.insert(
                "n".into(),
                memobuild_oci::LayerEntry {
                    kind: memobuild_oci::EntryKind::File(memobuild_oci::Content::Bytes(
                        format!("{nonce}\n").into_bytes(),
                    )),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            );
            warm_writer.write(black_box(&one), &blobs).unwrap()
        })
    });
    g.finish();
    drop(layer_dir);

    // --- Planning: what the dirty re-plan after a save costs -----------------
    // `COPY . /app` over the whole context with every file in the hash cache:
    // the key of the step covers all 10,000 files.
    let store_dir = tempfile::tempdir().expect("temp dir");
    let store = memobuild_store::Store::open(store_dir.path()).expect("store");
    let dockerfile = memobuild_dockerfile::parse("FROM scratch\nCOPY . /app\n", "Dockerfile")
        .expect("plan Dockerfile parses");
    let index = std::sync::Arc::new(index);
    let no_args = BTreeMap::new();
    let merkle = memobuild_context::merkle::DirDigests::new();
    let mut g = c.benchmark_group("plan");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(files as u64));
    g.bench_function(format!("copy_dot_{files}_files_warm"), |b| {
        b.iter(|| {
            memobuild_plan::plan(&memobuild_plan::PlanInput {
                dockerfile: &dockerfile,
                target: "",
                build_args: &no_args,
                context: index.clone(),
                hashes: &warm,
                merkle: &merkle,
                focus: None,
                images: &store,
                epoch: None,
                run_options: "",
                stage_contents: &memobuild_plan::NoStageContents,
                urls: &memobuild_plan::NoUrls,
                secrets: &no_args,
                cancelled: None,
            })
            .unwrap()
        })
    });
    // What the daemon does after a one-file save: refresh that path in the
    // tree (new stamps up to the root), then re-plan for the dirty set with
    // only the saved path in focus. Directory digests come from the cache
    // except along the saved file's path.
    let mut tree = memobuild_context::Tree::scan(&root).unwrap();
    let saved = plan[plan.len() / 2].rel.clone();
    let focus: std::collections::BTreeSet<String> = [saved.clone()].into();
    let mut round = 0u64;
    g.bench_function(format!("save_then_dirty_replan_{files}_files"), |b| {
        b.iter(|| {
            round += 1;
            std::fs::write(root.join(&saved), round.to_le_bytes()).unwrap();
            tree.refresh(&saved, &mut Vec::new()).unwrap();
            let index = ContextIndex::view(&tree, &root, DockerIgnore::empty());
            memobuild_plan::plan(&memobuild_plan::PlanInput {
                dockerfile: &dockerfile,
                target: "",
                build_args: &no_args,
                context: std::sync::Arc::new(index),
                hashes: &warm,
                merkle: &merkle,
                focus: Some(&focus),
                images: &store,
                epoch: None,
                run_options: "",
                stage_contents: &memobuild_plan::NoStageContents,
                urls: &memobuild_plan::NoUrls,
                secrets: &no_args,
                cancelled: None,
            })
            .unwrap()
        })
    });
    g.finish();
    drop(dir);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// One 4 MiB `read_blob` answer (what `-o` outputs fetch, chunk after chunk),
/// encoded and decoded as tarpc frames: named MessagePack (protocol 3)
/// against bincode (protocol 1-2), so the cost of a self-describing wire is
/// on record (docs/PERFORMANCE.md).
fn wire_benches(c: &mut Criterion) {
    use futures::pin_mut;
    use memobuild_proto::wire::MsgPack;
    use memobuild_proto::{ByteBuf, MemobuildResponse, RpcError};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::tokio_serde::{Deserializer, Serializer};
    type Frame = tarpc::Response<MemobuildResponse>;
    let bytes: Vec<u8> = (0..memobuild_proto::BLOB_CHUNK_BYTES as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let frame = Frame {
        request_id: 7,
        message: Ok(MemobuildResponse::ReadBlob(Ok::<_, RpcError>(
            ByteBuf::from(bytes),
        ))),
    };
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(memobuild_proto::BLOB_CHUNK_BYTES));
    g.bench_function("read_blob_4MiB_msgpack", |b| {
        b.iter(|| {
            let codec = MsgPack::<Frame, Frame>::default();
            pin_mut!(codec);
            let out = codec.as_mut().serialize(black_box(&frame)).unwrap();
            let back: Frame = codec.deserialize(&out.as_ref().into()).unwrap();
            back
        })
    });
    g.bench_function("read_blob_4MiB_bincode", |b| {
        b.iter(|| {
            let codec = Bincode::<Frame, Frame>::default();
            pin_mut!(codec);
            let out = codec.as_mut().serialize(black_box(&frame)).unwrap();
            let back: Frame = codec.deserialize(&out.as_ref().into()).unwrap();
            back
        })
    });
    g.finish();
}

fn main() {
    let mut c = config();
    wire_benches(&mut c);
    all_benches(&mut c);
    c.final_summary();
}
