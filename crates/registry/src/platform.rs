//! Platforms (`linux/amd64`, `linux/arm64/v8`): which manifest of a
//! multi-platform image index or Docker manifest list a build takes.

use super::RegistryError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty = any variant.
    pub variant: String,
}

impl Platform {
    /// The host's platform (Go's names, as in image configs).
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: memobuild_oci::config::host_architecture().to_string(),
            variant: String::new(),
        }
    }

    /// `os/arch[/variant]`; empty = the host's.
    pub fn parse(text: &str) -> Result<Platform, RegistryError> {
        if text.is_empty() {
            return Ok(Platform::host());
        }
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
            }),
            _ => Err(
                RegistryError::new(format!("--platform {text}"), "is not a platform")
                    .hint("write it as OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8"),
            ),
        }
    }

    fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"].as_str() == Some(&self.os)
            && p["architecture"].as_str() == Some(&self.architecture)
            && (self.variant.is_empty() || p["variant"].as_str() == Some(&self.variant))
    }

    /// The entry of an index's `manifests` for this platform: an exact match,
    /// else (no variant asked) the first of the architecture.
    pub fn select<'a>(
        &self,
        index: &'a serde_json::Value,
    ) -> Result<&'a serde_json::Value, String> {
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let found = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| self.matches(&m["platform"]));
        found.ok_or_else(|| {
            let offered: Vec<String> = manifests
                .iter()
                .filter_map(|m| {
                    let p = &m["platform"];
                    let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
                    Some(match p["variant"].as_str() {
                        Some(v) => format!("{os}/{arch}/{v}"),
                        None => format!("{os}/{arch}"),
                    })
                })
                .collect();
            format!(
                "the image has no {} variant (it has: {})",
                self,
                offered.join(", ")
            )
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_selects() {
        let index = serde_json::json!({"manifests": [
            {"digest": "a", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "c", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let pick = |p: &str| {
            Platform::parse(p)
                .unwrap()
                .select(&index)
                .map(|m| m["digest"].clone())
        };
        assert_eq!(pick("linux/amd64").unwrap(), "c");
        assert_eq!(pick("linux/arm64").unwrap(), "b");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "b");
        assert_eq!(pick("linux/arm/v7").unwrap(), "a");
        let e = pick("linux/s390x").unwrap_err();
        assert!(
            e.contains("linux/arm/v7, linux/arm64/v8, linux/amd64"),
            "{e}"
        );
        assert!(Platform::parse("amd64").is_err());
        assert_eq!(Platform::parse("").unwrap(), Platform::host());
    }
}
