//! The planner without a daemon: cache keys, what an edit or an argument
//! invalidates, and stage semantics, from a real context on disk and base
//! images answered from a map.

use memobuild_context::dockerignore::DockerIgnore;
use memobuild_context::merkle::DirDigests;
use memobuild_context::{ContextIndex, HashCache};
use memobuild_oci::image::StoredImage;
use memobuild_oci::ImageConfig;
use memobuild_plan::{plan, Base, Plan, PlanInput};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A context directory and everything a plan is made from but the Dockerfile.
struct Fixture {
    dir: tempfile::TempDir,
    hashes: HashCache,
    merkle: DirDigests,
    images: BTreeMap<String, StoredImage>,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            hashes: HashCache::new(),
            merkle: DirDigests::new(),
            images: BTreeMap::new(),
        };
        for (path, text) in files {
            f.write(path, text);
        }
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.root().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn plan(&self, dockerfile: &str, target: &str, args: &[(&str, &str)]) -> Plan {
        self.try_plan(dockerfile, target, args)
            .unwrap_or_else(|e| panic!("plan failed: {e}"))
    }

    fn try_plan(
        &self,
        dockerfile: &str,
        target: &str,
        args: &[(&str, &str)],
    ) -> Result<Plan, memobuild_dockerfile::DockerfileError> {
        self.try_plan_unless(dockerfile, target, args, None)
    }

    /// [`Fixture::try_plan`] with the build's cancel flag.
    fn try_plan_unless(
        &self,
        dockerfile: &str,
        target: &str,
        args: &[(&str, &str)],
        cancelled: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Plan, memobuild_dockerfile::DockerfileError> {
        let none = BTreeMap::new();
        self.try_plan_full(
            dockerfile,
            target,
            args,
            &memobuild_plan::NoUrls,
            &none,
            cancelled,
        )
    }

    /// Plans `dockerfile` against the fixture's context and images with
    /// every input the tests vary.
    fn try_plan_full(
        &self,
        dockerfile: &str,
        target: &str,
        args: &[(&str, &str)],
        urls: &dyn memobuild_plan::UrlSource,
        secrets: &BTreeMap<String, String>,
        cancelled: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Plan, memobuild_dockerfile::DockerfileError> {
        let df = memobuild_dockerfile::parse(dockerfile, "Dockerfile")?;
        let ignore = DockerIgnore::parse("").unwrap();
        let context = ContextIndex::scan(self.root(), &ignore).unwrap();
        let build_args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(&PlanInput {
            dockerfile: &df,
            target,
            build_args: &build_args,
            context: Arc::new(context),
            hashes: &self.hashes,
            merkle: &self.merkle,
            focus: None,
            images: &self.images,
            epoch: None,
            run_options: "",
            stage_contents: &memobuild_plan::NoStageContents,
            urls,
            secrets,
            cancelled,
        })
    }
}

fn keys(plan: &Plan) -> Vec<String> {
    plan.steps.iter().map(|s| s.key.clone()).collect()
}

fn image(manifest: &str, env: &str) -> StoredImage {
    let mut config = ImageConfig::default();
    config.config.env = Some(vec![env.to_string()]);
    StoredImage {
        manifest_digest: manifest.to_string(),
        config_digest: format!("{manifest}-config"),
        config,
        layers: Vec::new(),
        size: 0,
    }
}

const COPY_TWO: &str = "FROM scratch\nCOPY a.txt /a\nCOPY b.txt /b\n";

#[test]
fn the_same_inputs_give_the_same_keys_from_a_fresh_planner() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let first = keys(&f.plan(COPY_TWO, "", &[]));
    let again = Fixture {
        hashes: HashCache::new(),
        merkle: DirDigests::new(),
        ..f
    };
    assert_eq!(first, keys(&again.plan(COPY_TWO, "", &[])));
    assert_eq!(first.len(), 2, "FROM scratch adds no step; two COPY steps");
}

#[test]
fn editing_a_file_changes_the_copy_that_reads_it_and_every_step_after() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let before = keys(&f.plan(COPY_TWO, "", &[]));
    f.write("b.txt", "b, edited");
    let after = keys(&f.plan(COPY_TWO, "", &[]));
    assert_eq!(before[0], after[0], "COPY a.txt does not read b.txt");
    assert_ne!(before[1], after[1], "COPY b.txt reads the edited file");

    f.write("a.txt", "a, edited");
    let last = keys(&f.plan(COPY_TWO, "", &[]));
    assert_ne!(after[0], last[0]);
    assert_ne!(after[1], last[1], "a step's key covers its parent's");
}

#[test]
fn touching_a_file_without_changing_it_keeps_every_key() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let before = keys(&f.plan(COPY_TWO, "", &[]));
    let file = std::fs::File::options()
        .write(true)
        .open(f.root().join("a.txt"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        before,
        keys(&f.plan(COPY_TWO, "", &[])),
        "mtimes are not a key input"
    );
}

#[test]
fn a_build_arg_changes_only_the_steps_in_its_scope() {
    let dockerfile = "FROM scratch\nCOPY a.txt /a\nARG MODE=debug\nCOPY b.txt /b\n";
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let debug = f.plan(dockerfile, "", &[]);
    let release = f.plan(dockerfile, "", &[("MODE", "release")]);
    assert_eq!(debug.steps[0].key, release.steps[0].key, "before the ARG");
    let last = debug.steps.len() - 1;
    assert_ne!(
        debug.steps[last].key, release.steps[last].key,
        "after the ARG"
    );
    assert_eq!(
        debug.steps[last]
            .inputs
            .args
            .get("MODE")
            .map(String::as_str),
        Some("debug"),
        "the key's components name the ARG's value, for `explain`"
    );
    assert_eq!(
        f.plan(dockerfile, "", &[("MODE", "debug")]).steps[last].key,
        debug.steps[last].key,
        "passing the default explicitly is the same build"
    );
}

#[test]
fn from_an_image_resolves_through_the_image_source_and_its_digest_is_a_key_input() {
    let dockerfile = "FROM base\nCOPY a.txt /a\n";
    let mut f = Fixture::new(&[("a.txt", "a")]);
    f.images
        .insert("base:latest".into(), image("sha256:one", "A=1"));
    let one = f.plan(dockerfile, "", &[]);
    assert!(matches!(&one.stages[0].base, Base::Image(i) if i.manifest_digest == "sha256:one"));
    assert_eq!(
        one.images.get("base:latest").map(String::as_str),
        Some("sha256:one")
    );
    f.images
        .insert("base:latest".into(), image("sha256:two", "A=1"));
    let two = f.plan(dockerfile, "", &[]);
    assert_ne!(
        keys(&one),
        keys(&two),
        "a new base image invalidates the steps on it"
    );
}

#[test]
fn a_missing_base_image_is_an_error_at_its_from_line_only_when_needed() {
    let dockerfile = "FROM scratch AS ok\nCOPY a.txt /a\n\nFROM nowhere AS broken\nCOPY a.txt /a\n";
    let f = Fixture::new(&[("a.txt", "a")]);
    let ok = f.plan(dockerfile, "ok", &[]);
    assert_eq!(ok.steps.len(), 1, "the unneeded stage is not planned");
    let e = f.try_plan(dockerfile, "broken", &[]).unwrap_err();
    assert_eq!((e.loc.line, e.file.as_str()), (4, "Dockerfile"), "{e}");
    assert!(e.message.contains("nowhere"), "{e}");
}

#[test]
fn a_stage_the_target_does_not_need_is_not_planned() {
    let dockerfile =
        "FROM scratch AS unused\nCOPY b.txt /b\n\nFROM scratch AS app\nCOPY a.txt /a\n";
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let app = f.plan(dockerfile, "app", &[]);
    assert_eq!(app.stages.len(), 1);
    assert_eq!(app.steps.len(), 1);
    assert_eq!(app.steps[0].display, "COPY a.txt /a");
    f.write("b.txt", "edited");
    assert_eq!(keys(&app), keys(&f.plan(dockerfile, "app", &[])));
}

#[test]
fn copy_from_a_stage_depends_on_that_stage() {
    let dockerfile =
        "FROM scratch AS build\nCOPY b.txt /out\n\nFROM scratch\nCOPY --from=build /out /out\n";
    let f = Fixture::new(&[("b.txt", "b")]);
    let before = f.plan(dockerfile, "", &[]);
    assert_eq!(before.stages.len(), 2, "the final stage needs `build`");
    f.write("b.txt", "edited");
    let after = f.plan(dockerfile, "", &[]);
    assert_ne!(
        before.steps.last().unwrap().key,
        after.steps.last().unwrap().key
    );
}

/// A stage's base's ONBUILD triggers are its first steps, and what they name
/// (an earlier stage) is a dependency, planned even though only the trigger
/// names it.
#[test]
fn onbuild_triggers_are_first_steps_and_their_from_is_a_dependency() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let df = "FROM scratch AS src\nCOPY a.txt /in\nFROM scratch AS base\nONBUILD COPY --from=src /in /out\nFROM base AS mid\nCOPY b.txt /b\nFROM scratch\nCOPY --from=mid /out /\n";
    let p = f.plan(df, "", &[]);
    let labels: Vec<&str> = p.stages.iter().map(|s| s.label.as_str()).collect();
    assert!(labels.contains(&"src"), "{labels:?}");
    let mid = p.stages.iter().position(|s| s.label == "mid").unwrap();
    let src = p.stages.iter().position(|s| s.label == "src").unwrap();
    assert!(p.stages[mid].deps.contains(&src));
    let first = &p.steps[p.stages[mid].steps[0]];
    assert_eq!(first.display, "ONBUILD COPY --from=src /in /out");
    // The trigger is not inherited by what is built FROM mid.
    assert!(p.stages[mid].config.config.on_build.is_none());
}

/// Answers `ADD https://...` from a map of URL -> content, written to files.
struct Urls {
    dir: tempfile::TempDir,
    content: BTreeMap<String, String>,
}

impl memobuild_plan::UrlSource for Urls {
    /// Every ref of a remote named in `content` is the commit its content names.
    fn git(
        &self,
        remote: &str,
        reference: &str,
        _options: memobuild_plan::GitOptions,
    ) -> Result<memobuild_plan::GitTree, String> {
        let commit = self
            .content
            .get(&format!("{remote}#{reference}"))
            .ok_or("no such ref")?;
        Ok(memobuild_plan::GitTree {
            dir: self.dir.path().to_path_buf(),
            commit: commit.clone(),
        })
    }

    fn fetch(&self, url: &str) -> Result<memobuild_plan::Fetched, String> {
        use sha2::Digest as _;
        let text = self.content.get(url).ok_or("404")?;
        let sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let path = self.dir.path().join(&sha256);
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(memobuild_plan::Fetched {
            path,
            sha256,
            modified: None,
        })
    }
}

impl Fixture {
    fn plan_with_urls(
        &self,
        dockerfile: &str,
        urls: &Urls,
    ) -> Result<Plan, memobuild_dockerfile::DockerfileError> {
        self.try_plan_full(dockerfile, "", &[], urls, &BTreeMap::new(), None)
    }
}

/// ADD of a URL is keyed by the downloaded content; `--checksum` must match
/// it; COPY refuses URLs; the file is named after the URL's path.
#[test]
fn add_of_a_url_is_keyed_by_its_content() {
    use sha2::Digest as _;
    let f = Fixture::new(&[]);
    let mut urls = Urls {
        dir: tempfile::tempdir().unwrap(),
        content: BTreeMap::from([("http://h/dir/f.txt".to_string(), "one".to_string())]),
    };
    let df = "FROM scratch\nADD http://h/dir/f.txt /d/\n";
    let one = f.plan_with_urls(df, &urls).unwrap();
    match &one.steps[0].op {
        memobuild_plan::Op::Copy(c) => match &c.source {
            memobuild_plan::CopySource::Url { files } => assert_eq!(files[0].name, "f.txt"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    urls.content
        .insert("http://h/dir/f.txt".to_string(), "two".to_string());
    let two = f.plan_with_urls(df, &urls).unwrap();
    assert_ne!(keys(&one), keys(&two));
    let sum = hex::encode(sha2::Sha256::digest(b"two"));
    let ok = format!("FROM scratch\nADD --checksum=sha256:{sum} http://h/dir/f.txt /d/\n");
    assert!(f.plan_with_urls(&ok, &urls).is_ok());
    let bad = format!(
        "FROM scratch\nADD --checksum=sha256:{} http://h/dir/f.txt /d/\n",
        "0".repeat(64)
    );
    let err = f.plan_with_urls(&bad, &urls).unwrap_err();
    assert!(err.message.contains("digest mismatch"), "{}", err.message);
    let err = f
        .plan_with_urls("FROM scratch\nCOPY http://h/dir/f.txt /d/\n", &urls)
        .unwrap_err();
    assert!(err.message.contains("source can't be a URL for COPY"));
}

/// `--parents`, `--exclude` and `--unpack` are key inputs only when given.
#[test]
fn copy_flags_change_the_key_only_when_given() {
    let f = Fixture::new(&[("a/b.txt", "b")]);
    let plain = keys(&f.plan("FROM scratch\nCOPY a/b.txt /x/\n", "", &[]));
    for df in [
        "FROM scratch\nCOPY --parents a/b.txt /x/\n",
        "FROM scratch\nCOPY --exclude=*.md a/b.txt /x/\n",
    ] {
        assert_ne!(plain, keys(&f.plan(df, "", &[])), "{df}");
    }
    let add = keys(&f.plan("FROM scratch\nADD a/b.txt /x/\n", "", &[]));
    assert_ne!(
        add,
        keys(&f.plan("FROM scratch\nADD --unpack=false a/b.txt /x/\n", "", &[]))
    );
    // A pivot selects what keeps its path below the root.
    let p = f.plan("FROM scratch\nCOPY --parents ./a/./b.txt /x/\n", "", &[]);
    match &p.steps[0].op {
        memobuild_plan::Op::Copy(c) => {
            assert!(c.parents);
            assert_eq!(c.root_patterns, ["b.txt"]);
        }
        other => panic!("{other:?}"),
    }
}

/// ADD of a git ref is keyed by the commit it names (not by `--checksum`,
/// which must be a prefix of that commit), over https or ssh alike; COPY is refused.
#[test]
fn add_of_a_git_ref_is_keyed_by_its_commit() {
    let f = Fixture::new(&[]);
    let mut urls = Urls {
        dir: tempfile::tempdir().unwrap(),
        content: BTreeMap::from([("https://h/r.git#v1".to_string(), "a".repeat(40))]),
    };
    let df = "FROM scratch\nADD https://h/r.git#v1 /src\n";
    let one = f.plan_with_urls(df, &urls).unwrap();
    let with_sum = format!(
        "FROM scratch\nADD --checksum={} https://h/r.git#v1 /src\n",
        "a".repeat(12)
    );
    assert_eq!(
        keys(&one),
        keys(&f.plan_with_urls(&with_sum, &urls).unwrap())
    );
    let keep = "FROM scratch\nADD --keep-git-dir https://h/r.git#v1 /src\n";
    assert_ne!(keys(&one), keys(&f.plan_with_urls(keep, &urls).unwrap()));
    urls.content
        .insert("https://h/r.git#v1".to_string(), "b".repeat(40));
    assert_ne!(keys(&one), keys(&f.plan_with_urls(df, &urls).unwrap()));
    let wrong = format!(
        "FROM scratch\nADD --checksum={} https://h/r.git#v1 /src\n",
        "a".repeat(40)
    );
    let err = f.plan_with_urls(&wrong, &urls).unwrap_err();
    assert!(
        err.message.contains("expected checksum to match"),
        "{}",
        err.message
    );
    let garbage = "FROM scratch\nADD --checksum=foobar https://h/r.git#v1 /src\n";
    let err = f.plan_with_urls(garbage, &urls).unwrap_err();
    assert!(
        err.message.contains("expected hex commit hash"),
        "{}",
        err.message
    );
    let err = f
        .plan_with_urls("FROM scratch\nCOPY https://h/r.git#v1 /src\n", &urls)
        .unwrap_err();
    assert!(
        err.message.contains("can't be a git ref for COPY"),
        "{}",
        err.message
    );
    // Over ssh (scp-like or ssh://), the remote and ref go to the source as
    // written, and the step is keyed by the commit as over https; a failure
    // says to forward an agent.
    let err = f
        .plan_with_urls("FROM scratch\nADD git@h:r.git#v1 /src\n", &urls)
        .unwrap_err();
    assert!(err.message.contains("no such ref"), "{}", err.message);
    assert!(
        err.hint.as_deref().unwrap_or("").contains("--ssh default"),
        "{err:?}"
    );
    let https_b = keys(&f.plan_with_urls(df, &urls).unwrap());
    for (remote, src) in [
        ("git@h:r.git", "git@h:r.git#v1"),
        ("ssh://git@h:2222/r.git", "ssh://git@h:2222/r.git#v1"),
        ("git@h:r.git", "git@h:r.git?ref=v1"),
    ] {
        urls.content.insert(format!("{remote}#v1"), "b".repeat(40));
        let ssh = format!("FROM scratch\nADD {src} /src\n");
        assert_eq!(
            keys(&f.plan_with_urls(&ssh, &urls).unwrap()),
            https_b,
            "{src}"
        );
    }
}

impl Fixture {
    fn plan_with_secrets(&self, dockerfile: &str, secrets: &[(&str, &str)]) -> Plan {
        let secrets: BTreeMap<String, String> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.try_plan_full(dockerfile, "", &[], &memobuild_plan::NoUrls, &secrets, None)
            .unwrap()
    }
}

/// A RUN that mounts a secret is keyed on the secret's MAC or its absence
/// (docs/CACHE.md); steps that mount none keep their keys whatever the
/// build's secrets.
#[test]
fn a_secret_mount_is_keyed_on_the_secrets_identity_and_nothing_else_is() {
    let f = Fixture::new(&[("a.txt", "a")]);
    let df =
        "FROM scratch\nCOPY a.txt /a\nRUN --mount=type=secret,id=s cat /run/secrets/s\nRUN true\n";
    let absent = f.plan_with_secrets(df, &[]);
    let mac1 = f.plan_with_secrets(df, &[("s", "11aa")]);
    let mac1_again = f.plan_with_secrets(df, &[("s", "11aa")]);
    let mac2 = f.plan_with_secrets(df, &[("s", "22bb")]);
    let other_id = f.plan_with_secrets(df, &[("t", "11aa")]);
    let (absent, mac1, mac1_again, mac2, other_id) = (
        keys(&absent),
        keys(&mac1),
        keys(&mac1_again),
        keys(&mac2),
        keys(&other_id),
    );
    assert_eq!(mac1, mac1_again);
    assert_eq!(absent[0], mac1[0], "COPY mounts no secret");
    for (a, b) in [(&absent, &mac1), (&mac1, &mac2)] {
        assert_ne!(a[1], b[1], "the secret's RUN");
        assert_ne!(a[2], b[2], "the step after it");
    }
    assert_eq!(
        other_id, absent,
        "a secret under another id is not this one"
    );
    // Steps without a secret mount: the same keys with or without secrets.
    let plain = "FROM scratch\nCOPY a.txt /a\nRUN true\n";
    assert_eq!(
        keys(&f.plan_with_secrets(plain, &[])),
        keys(&f.plan_with_secrets(plain, &[("s", "11aa")]))
    );
    // What `explain` shows: the MAC's start or `absent`, never more.
    let plan = f.plan_with_secrets(df, &[("s", "0123456789abcdef0123")]);
    assert_eq!(
        plan.steps[1]
            .inputs
            .files
            .get("secret:s")
            .map(String::as_str),
        Some("provided:0123456789abcdef")
    );
    let plan = f.plan_with_secrets(df, &[]);
    assert_eq!(
        plan.steps[1]
            .inputs
            .files
            .get("secret:s")
            .map(String::as_str),
        Some("absent")
    );
}

/// A build whose client left is cancelled; its plan stops at the next
/// instruction instead of running on (up to the 30 s bound) for nobody.
#[test]
fn a_cancelled_build_stops_planning_at_the_next_instruction() {
    use std::sync::atomic::AtomicBool;
    let f = Fixture::new(&[("a", "1")]);
    let df = "FROM scratch\nCOPY a /a\nENV X=1\n";
    let waiting = AtomicBool::new(false);
    assert!(f.try_plan_unless(df, "", &[], Some(&waiting)).is_ok());
    let left = AtomicBool::new(true);
    let e = f
        .try_plan_unless(df, "", &[], Some(&left))
        .expect_err("a cancelled plan fails");
    assert_eq!(e.loc.line, 2, "at the first instruction it reached: {e}");
    assert!(e.message.contains("cancelled"), "{e}");
}

/// SOURCE_DATE_EPOCH as BuildKit's frontend resolves it: the client's
/// number wins, else the Dockerfile's default (a number, empty, `context`
/// or a source-only stage); a stage's ARG sees the number; the epoch is a
/// key input (it changes the layers' times).
#[test]
fn source_date_epoch_is_resolved_from_the_dockerfile_default() {
    let f = Fixture::new(&[]);
    let urls = Urls {
        dir: tempfile::tempdir().unwrap(),
        content: BTreeMap::from([("http://h/src.bin".to_string(), "not an archive".to_string())]),
    };
    let with = |default: &str, rest: &str| {
        format!("ARG SOURCE_DATE_EPOCH={default}\nFROM scratch AS src\nADD http://h/src.bin /\nFROM scratch\n{rest}")
    };
    let p = f.plan_with_urls(&with("42", "ENV E=1\n"), &urls).unwrap();
    assert_eq!(p.epoch, Some(42));
    for none in ["", "context", "src"] {
        // `src`: no Last-Modified and not an archive: no time.
        let p = f.plan_with_urls(&with(none, "ENV E=1\n"), &urls).unwrap();
        assert_eq!(p.epoch, None, "{none:?}");
    }
    let err = f.plan_with_urls(&with("nope", ""), &urls).unwrap_err();
    assert_eq!(err.message, "invalid SOURCE_DATE_EPOCH: nope");
    let bad_stage = "ARG SOURCE_DATE_EPOCH=src\nFROM scratch AS src\nRUN true\nFROM scratch\n";
    let err = f.plan_with_urls(bad_stage, &urls).unwrap_err();
    assert_eq!(
        err.message,
        "SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported run instruction"
    );
    assert_eq!(err.loc.line, 2);
    let not_scratch = "ARG SOURCE_DATE_EPOCH=src\nFROM busybox AS src\nFROM scratch\n";
    let err = f.plan_with_urls(not_scratch, &urls).unwrap_err();
    assert_eq!(err.message, "SOURCE_DATE_EPOCH stage must use FROM scratch");
    // A stage's ARG gets the resolved number; the epoch keys the steps.
    let a = f
        .plan_with_urls(
            &with("42", "ARG SOURCE_DATE_EPOCH\nENV E=$SOURCE_DATE_EPOCH\n"),
            &urls,
        )
        .unwrap();
    let last = &a.stages[a.target].config;
    assert_eq!(last.env_get("E"), Some("42"));
    let b = f.plan_with_urls(&with("43", "ENV E=1\n"), &urls).unwrap();
    let c = f.plan_with_urls(&with("42", "ENV E=1\n"), &urls).unwrap();
    assert_ne!(keys(&b), keys(&c));
}
