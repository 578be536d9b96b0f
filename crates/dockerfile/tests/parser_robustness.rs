//! Malformed Dockerfiles never panic: parsing either succeeds or returns an
//! error whose position lies inside the file; expansion of every word either
//! succeeds or fails cleanly.

use memobuild_dockerfile::{self as dockerfile, expand, Instruction};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Lines that look like Dockerfile instructions, often broken.
fn line() -> impl Strategy<Value = String> {
    let keyword = prop::sample::select(vec![
        "FROM",
        "from",
        "ARG",
        "ENV",
        "LABEL",
        "COPY",
        "ADD",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "VOLUME",
        "CMD",
        "ENTRYPOINT",
        "SHELL",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ONBUILD",
        "MAINTAINER",
        "RUN",
        "# escape=`",
        "# syntax=x",
        "#",
        "",
        "BOGUS",
    ]);
    let arg = "[ a-zA-Z0-9_$={}:+?\\-\"'\\[\\]/.,*`\\\\#<>\t]{0,40}";
    (keyword, arg, prop::bool::ANY).prop_map(|(k, a, cont)| {
        let mut l = format!("{k} {a}");
        if cont {
            l.push_str(" \\");
        }
        l
    })
}

fn dockerfile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..12).prop_map(|lines| lines.join("\n"))
}

fn words_of(ins: &Instruction) -> Vec<String> {
    match ins {
        Instruction::Env(pairs) | Instruction::Label(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        Instruction::Workdir(w)
        | Instruction::User(w)
        | Instruction::Stopsignal(w)
        | Instruction::Expose(w) => {
            vec![w.clone()]
        }
        Instruction::Copy(spec) | Instruction::Add(spec) => spec
            .sources
            .iter()
            .map(|s| s.value.clone())
            .chain([spec.dest.value.clone()])
            .collect(),
        Instruction::Volume(v) => v.clone(),
        _ => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_and_errors_have_positions(text in dockerfile_text()) {
        match dockerfile::parse(&text, "Dockerfile") {
            Ok(df) => {
                let vars: BTreeMap<String, String> = [("A".to_string(), "a b".to_string())].into();
                for stage in &df.stages {
                    for ins in &stage.instructions {
                        for w in words_of(&ins.value) {
                            let _ = expand::expand_word(&w, &vars, df.escape);
                            let _ = expand::expand_words(&w, &vars, df.escape);
                        }
                    }
                }
            }
            Err(e) => {
                let lines = text.split('\n').count().max(1);
                prop_assert!(e.loc.line >= 1 && e.loc.line <= lines + 1, "line {} outside 1..={}", e.loc.line, lines + 1);
                prop_assert!(e.loc.column >= 1);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in "\\PC{0,200}") {
        let _ = dockerfile::parse(&text, "Dockerfile");
    }
}

#[test]
fn known_bad_inputs_report_line_and_column() {
    let cases = [
        ("FROM scratch\nCOPY --nope=1 a b\n", 2, 6),
        ("FROM scratch\nENV\n", 2, 1),
        ("\n\nCOPY a b\n", 3, 1),
    ];
    for (text, line, column) in cases {
        let e = dockerfile::parse(text, "Dockerfile").expect_err(text);
        assert_eq!((e.loc.line, e.loc.column), (line, column), "{text:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("Dockerfile:{line}:{column}: ")),
            "{e}"
        );
    }
}
