//! The `created_by` text of an image history entry, as BuildKit's Dockerfile
//! frontend writes it (`dockerfile2llb`: `commitToHistory`, with Go's `%v`,
//! `%q` and `%+v` formatting of the values): `RUN |1 A=b /bin/sh -c make #
//! buildkit`, `COPY --chown=1:2 src /dst # buildkit`, `CMD ["sh" "-c" "x"]`,
//! `EXPOSE [80/tcp]`, `VOLUME [/data]`, `WORKDIR /app`, `ARG A=b`.

use memobuild_oci::config::HealthConfig;

/// Go's `%v` of a `[]string`: `[a b]`.
pub(crate) fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(crate) fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// `RUN` with the build args in scope (BuildKit's runCommandString: `|N`
/// and `KEY=value` for each ARG declared, in order), then the process's
/// arguments joined by spaces, then ` # buildkit`.
pub(crate) fn run(args: &[String], build_args: &[(String, String)]) -> String {
    let mut words: Vec<String> = Vec::new();
    if !build_args.is_empty() {
        words.push(format!("|{}", build_args.len()));
        words.extend(build_args.iter().map(|(k, v)| format!("{k}={v}")));
    }
    words.extend(args.iter().cloned());
    format!("RUN {} # buildkit", words.join(" "))
}

/// Go's `time.Duration.String()` of `nanos`: `0s`, `500ms`, `1m30s`, `1h0m0s`.
pub(crate) fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let frac = |v: u64, unit: u64| {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let width = unit.to_string().len() - 1;
            let digits = format!("{rest:0width$}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
    };
    const SEC: u64 = 1_000_000_000;
    if u < SEC {
        let (unit, name) = if u < 1_000 {
            (1, "ns")
        } else if u < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{sign}{}{name}", frac(u, unit));
    }
    let hours = u / (3600 * SEC);
    let minutes = (u / (60 * SEC)) % 60;
    let seconds = frac(u % (60 * SEC), SEC);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{seconds}s")
    } else {
        format!("{sign}{seconds}s")
    }
}

/// `HEALTHCHECK` as Go's `%+v` of the image's HealthcheckConfig.
pub(crate) fn healthcheck(h: &HealthConfig) -> String {
    format!(
        "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        go_list(h.test.as_deref().unwrap_or_default()),
        go_duration(h.interval),
        go_duration(h.timeout),
        go_duration(h.start_period),
        go_duration(h.start_interval),
        h.retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500), "1.5µs");
        let v = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo \"hi\"".to_string(),
        ];
        assert_eq!(go_quoted_list(&v), r#"["/bin/sh" "-c" "echo \"hi\""]"#);
        assert_eq!(go_list(&v[..2]), "[/bin/sh -c]");
        assert_eq!(
            run(&v, &[("A".into(), "1".into()), ("B".into(), String::new())]),
            r#"RUN |2 A=1 B= /bin/sh -c echo "hi" # buildkit"#
        );
        assert_eq!(run(&v[..1], &[]), "RUN /bin/sh # buildkit");
    }
}
