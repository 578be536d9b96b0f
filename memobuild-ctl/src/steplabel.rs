//! Step names in plain progress and `logs`, numbered as BuildKit's plain
//! progress numbers them: `[NAME N/M] INSTRUCTION`, where a stage counts its
//! ADD, COPY, RUN and WORKDIR steps plus its FROM when the base is an image
//! (a FROM scratch or FROM an earlier stage is no step), an unnamed stage is
//! `stage-INDEX`, and a build of one stage has no name. Other instructions
//! (ENV, ARG, ...) are no step in BuildKit; here they show without numbers.

use memobuild_proto::StepInfo;

/// Whether `instruction` is a step BuildKit numbers.
fn counted(instruction: &str) -> bool {
    let keyword = instruction.split_whitespace().next().unwrap_or("");
    ["ADD", "COPY", "RUN", "WORKDIR"]
        .iter()
        .any(|k| keyword.eq_ignore_ascii_case(k))
}

/// `FROM NAME` of an image: the daemon names images as stored (`name:tag`
/// or `name@digest`), which no stage name can be.
fn from_image(from: &str) -> bool {
    from.strip_prefix("FROM ")
        .is_some_and(|name| name != "scratch" && name.contains([':', '@']))
}

/// `[NAME N/M] INSTRUCTION` (see the module docs) for step `step`.
pub fn label(steps: &[StepInfo], step: usize) -> String {
    let Some(s) = steps.get(step) else {
        return String::new();
    };
    let single = steps.iter().all(|x| x.stage == s.stage);
    let name = if single {
        String::new()
    } else if !s.stage.is_empty() && s.stage.bytes().all(|b| b.is_ascii_digit()) {
        format!("stage-{}", s.stage)
    } else {
        s.stage.clone()
    };
    let in_stage: Vec<&StepInfo> = steps.iter().filter(|x| x.stage == s.stage).collect();
    let from = usize::from(in_stage.first().is_some_and(|x| from_image(&x.from)));
    let total = from + in_stage.iter().filter(|x| counted(&x.instruction)).count();
    if !counted(&s.instruction) {
        return match name.is_empty() {
            true => s.instruction.clone(),
            false => format!("[{name}] {}", s.instruction),
        };
    }
    let pos = from
        + in_stage
            .iter()
            .take_while(|x| x.index != step)
            .filter(|x| counted(&x.instruction))
            .count()
        + 1;
    // BuildKit pads the position to the width of the total.
    let width = total.to_string().len();
    let place = format!("{pos:>width$}/{total}");
    match name.is_empty() {
        true => format!("[{place}] {}", s.instruction),
        false => format!("[{name} {place}] {}", s.instruction),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(index: usize, stage: &str, instruction: &str, from: &str) -> StepInfo {
        StepInfo {
            index,
            stage: stage.into(),
            instruction: instruction.into(),
            location: String::new(),
            cache_key: String::new(),
            from: from.into(),
        }
    }

    #[test]
    fn numbered_as_buildkit() {
        let steps = vec![
            step(0, "base", "WORKDIR /out", "FROM busybox:latest"),
            step(1, "base", "ENV A=b", "FROM busybox:latest"),
            step(2, "base", "RUN echo", "FROM busybox:latest"),
            step(3, "1", "COPY --from=base /out /out", "FROM scratch"),
        ];
        assert_eq!(label(&steps, 0), "[base 2/3] WORKDIR /out");
        assert_eq!(label(&steps, 1), "[base] ENV A=b");
        assert_eq!(label(&steps, 2), "[base 3/3] RUN echo");
        assert_eq!(label(&steps, 3), "[stage-1 1/1] COPY --from=base /out /out");
        let one = vec![step(0, "0", "COPY a b", "FROM scratch")];
        assert_eq!(label(&one, 0), "[1/1] COPY a b");
        let many: Vec<StepInfo> = (0..10)
            .map(|i| step(i, "0", "RUN x", "FROM base"))
            .collect();
        assert_eq!(label(&many, 0), "[ 1/10] RUN x");
    }
}
