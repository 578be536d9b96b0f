//! `--build-context NAME=docker-image://REF`: a FROM, `COPY --from` or
//! `RUN --mount=from=` naming NAME uses the image REF instead (pulled like
//! any base image). The planner and the registry step ask the store through
//! [`Aliased`], so NAME never has to exist anywhere.

use memobuild_oci::image::{ImageSource, StoredImage};
use memobuild_oci::{normalize_image_name, OciError};
use memobuild_proto::{BuildRequest, RpcError};
use std::collections::BTreeMap;

const DOCKER_IMAGE: &str = "docker-image://";

/// Normalized NAME -> REF as written (what is pulled), from the request.
pub(crate) fn image_aliases(request: &BuildRequest) -> Result<BTreeMap<String, String>, RpcError> {
    let mut out = BTreeMap::new();
    for (name, value) in &request.build_contexts {
        let Some(reference) = value.strip_prefix(DOCKER_IMAGE).filter(|r| !r.is_empty()) else {
            return Err(RpcError::with_hint(
                format!("--build-context {name}={value}: only docker-image://REF is supported"),
                "use --build-context NAME=docker-image://IMAGE",
            ));
        };
        out.insert(normalize_image_name(name), reference.to_string());
    }
    Ok(out)
}

/// An image source that answers for each alias with its image.
pub(crate) struct Aliased<'a> {
    pub inner: &'a dyn ImageSource,
    pub aliases: &'a BTreeMap<String, String>,
}

impl ImageSource for Aliased<'_> {
    fn image(&self, name: &str) -> Result<Option<StoredImage>, OciError> {
        match self.aliases.get(name) {
            Some(reference) => self.inner.image(&normalize_image_name(reference)),
            None => self.inner.image(name),
        }
    }
}

/// A build context named like a stage of the Dockerfile would replace that
/// stage, which memobuild does not do: refused, with where the stage is.
pub(crate) fn check_stage_names(
    df: &memobuild_dockerfile::Dockerfile,
    request: &BuildRequest,
) -> Result<(), RpcError> {
    for stage in &df.stages {
        let Some(stage_name) = &stage.name else {
            continue;
        };
        if let Some(name) = request
            .build_contexts
            .keys()
            .find(|n| n.eq_ignore_ascii_case(stage_name))
        {
            return Err(RpcError::with_hint(
                format!(
                    "{}:{}: --build-context {name} names the stage {stage_name:?}; replacing a stage with a build context is not supported",
                    df.name, stage.from.loc.line
                ),
                "give the build context a name no stage has, and use it in that stage's FROM",
            ));
        }
    }
    Ok(())
}
