//! The Dockerfile parser on arbitrary text: it either parses or returns an
//! error positioned inside the file, and every word it keeps expands or fails
//! cleanly. A panic, an abort or an out-of-memory is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memobuild_dockerfile::{self as dockerfile, expand, Instruction};
use std::collections::BTreeMap;

fn words_of(ins: &Instruction) -> Vec<String> {
    match ins {
        Instruction::Env(pairs) | Instruction::Label(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        Instruction::Workdir(w)
        | Instruction::User(w)
        | Instruction::Stopsignal(w)
        | Instruction::Expose(w) => vec![w.clone()],
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

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match dockerfile::parse(text, "Dockerfile") {
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
            assert!(
                e.loc.line >= 1 && e.loc.line <= lines + 1,
                "line {} outside 1..={}: {e}",
                e.loc.line,
                lines + 1
            );
            assert!(e.loc.column >= 1, "column 0: {e}");
            assert!(!e.message.is_empty());
        }
    }
});
