//! The RPC surface: accepts connections on the Unix socket, checks who is
//! asking, and answers the [`Memobuild`] service by forwarding each request to
//! the engine's facade. Nothing here knows how a build works.

use futures::StreamExt;
use memobuild_engine::{Caller, DaemonIdentity, Engine};
use memobuild_proto::{
    BlobHandoff, BuildId, BuildLogReport, BuildRequest, ByteBuf, DaemonInfo, DiskUsage, ErrorKind,
    EventBatch, Explanation, ImageBlobs, ImageSummary, ImportSpec, Memobuild, PruneRequest,
    PruneResult, RpcError, StatusReport, VerifyResult,
};
use std::sync::Arc;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::UnixListener;

#[derive(Clone)]
pub struct Server {
    pub engine: Arc<Engine>,
    pub info: Arc<DaemonInfo>,
    /// Blob descriptors waiting for their client's handoff connection.
    pub handoffs: Arc<crate::handoff::Handoffs>,
    /// The uid on the other end of this connection (set per connection).
    pub peer_uid: u32,
    /// Whether that uid is an admin (root, the daemon's own user,
    /// `admin-users`, `admin-groups`): it acts on everyone's things.
    pub admin: bool,
    /// Whose rights this connection's builds read files with (set per
    /// connection from its peer credentials; `None` for root).
    pub reader: Option<memobuild_proto::Reader>,
}

/// Serves connections until the listener fails; peers `access` refuses get
/// their permission error for every request instead.
pub async fn serve(
    listener: UnixListener,
    server: Server,
    access: Arc<crate::access::Access>,
) -> std::io::Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        let peer = crate::access::peer_of(&conn);
        let mut server = server.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let verdict = match peer {
                Ok(peer) => access
                    .check(peer)
                    .await
                    .map(|reader| (peer, reader))
                    .map_err(|e| (peer, e)),
                Err(e) => Err((
                    crate::access::Peer {
                        uid: u32::MAX,
                        gid: u32::MAX,
                        pid: None,
                    },
                    format!("permission denied: cannot read the peer's credentials: {e}"),
                )),
            };
            let peer = match verdict {
                Ok((peer, (reader, admin))) => {
                    server.reader = reader;
                    server.admin = admin;
                    peer
                }
                Err((peer, message)) => {
                    tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused a connection: {message}");
                    let transport = memobuild_proto::wire::transport(conn);
                    return crate::access::refuse(transport, message).await;
                }
            };
            // A blob handoff (docs in memobuild_proto::handoff), an ssh
            // forwarding session (memobuild_proto::sshfwd) or tarpc.
            match crate::handoff::first_byte(&conn).await {
                Ok(Some(b)) if b == memobuild_proto::handoff::MAGIC[0] => {
                    return crate::handoff::serve(conn, peer.uid, server.handoffs.clone()).await;
                }
                Ok(Some(b)) if b == memobuild_proto::sshfwd::MAGIC[0] => {
                    return server.engine.serve_ssh_session(conn, peer.uid).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
            server.peer_uid = peer.uid;
            let transport = memobuild_proto::wire::transport(conn);
            BaseChannel::with_defaults(transport)
                .execute(server.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                })
                .await;
        });
    }
}

impl Memobuild for Server {
    async fn hello(self, _: Context) -> Result<DaemonInfo, RpcError> {
        Ok((*self.info).clone())
    }

    async fn start_build(self, _: Context, mut request: BuildRequest) -> Result<BuildId, RpcError> {
        // Never what the client says: the kernel's word on who connected.
        request.read_as = self.reader.clone();
        request.owner = Some(self.peer_uid);
        if !std::path::Path::new(&request.context).is_absolute() {
            return Err(RpcError::of(
                ErrorKind::InvalidInput,
                "the build context must be an absolute path",
            ));
        }
        self.engine.check_request(&request)?;
        self.engine.check_tags(&request.tags, self.caller()).await?;
        if self.engine.is_shutting_down() {
            return Err(RpcError::of(
                ErrorKind::Unavailable,
                "memobuildd is shutting down: it finishes the running builds and accepts no new ones",
            )
            .hint("run the build again once the daemon is back (systemd restarts it, or start memobuildd)"));
        }
        Ok(self.engine.start(request, self.caller()))
    }

    async fn events(self, _: Context, build: BuildId, cursor: u64) -> Result<EventBatch, RpcError> {
        self.engine.events(build, cursor, self.caller()).await
    }

    async fn images(self, _: Context) -> Result<Vec<ImageSummary>, RpcError> {
        self.engine.images(self.caller()).await
    }

    async fn image_blobs(self, _: Context, manifest: String) -> Result<ImageBlobs, RpcError> {
        self.engine.image_blobs(manifest, self.caller()).await
    }

    async fn read_blob(
        self,
        _: Context,
        digest: String,
        offset: u64,
        len: u64,
    ) -> Result<ByteBuf, RpcError> {
        let bytes = self
            .engine
            .read_blob(digest, offset, len, self.caller())
            .await?;
        Ok(ByteBuf::from(bytes))
    }

    async fn status(self, _: Context, filter: String) -> Result<StatusReport, RpcError> {
        self.engine.status(&filter, &self.identity(), self.caller())
    }

    async fn forget(self, _: Context, filter: String) -> Result<Vec<String>, RpcError> {
        self.engine.forget(&filter, self.caller()).await
    }

    async fn explain(self, _: Context, filter: String) -> Result<Explanation, RpcError> {
        self.engine.explain(&filter, self.caller())
    }

    async fn wait_change(
        self,
        _: Context,
        project: String,
        generation: u64,
    ) -> Result<u64, RpcError> {
        self.engine
            .wait_change(&project, generation, self.caller())
            .await
    }

    async fn cancel(self, _: Context, build: BuildId) -> Result<(), RpcError> {
        self.engine.cancel(build, self.caller())
    }

    async fn upload_begin(self, _: Context) -> Result<u64, RpcError> {
        self.engine.upload_begin(self.caller())
    }

    async fn upload_chunk(self, _: Context, upload: u64, data: ByteBuf) -> Result<(), RpcError> {
        self.engine
            .upload_chunk(upload, data.into_vec(), self.caller())
            .await
    }

    async fn upload_commit(self, _: Context, upload: u64, digest: String) -> Result<u64, RpcError> {
        self.engine
            .upload_commit(upload, digest, self.caller())
            .await
    }

    async fn import_image(
        self,
        _: Context,
        name: String,
        spec: ImportSpec,
    ) -> Result<ImageSummary, RpcError> {
        self.engine.import_image(name, spec, self.caller()).await
    }

    async fn remove_image(self, _: Context, name: String) -> Result<(), RpcError> {
        self.engine.remove_image(name, self.caller()).await
    }

    async fn build_log(self, _: Context, build: String) -> Result<BuildLogReport, RpcError> {
        self.engine.build_log(build, self.caller()).await
    }

    async fn metrics(self, _: Context) -> Result<String, RpcError> {
        self.engine.metrics_text().await
    }

    async fn disk_usage(self, _: Context) -> Result<DiskUsage, RpcError> {
        self.engine.disk_usage_report().await
    }

    async fn prune(self, _: Context, request: PruneRequest) -> Result<PruneResult, RpcError> {
        self.engine.prune_request(request, self.caller()).await
    }

    async fn verify_store(self, _: Context) -> Result<VerifyResult, RpcError> {
        self.engine.verify_report().await
    }

    async fn open_blobs(self, _: Context, manifest: String) -> Result<BlobHandoff, RpcError> {
        let opened = self
            .engine
            .open_image_blobs(manifest, self.caller())
            .await?;
        self.handoffs.offer(self.peer_uid, opened)
    }

    async fn set_eager(
        self,
        _: Context,
        filter: String,
        on: bool,
    ) -> Result<Vec<String>, RpcError> {
        self.engine.set_eager(&filter, on, self.caller()).await
    }

    async fn status_wait(
        self,
        _: Context,
        filter: String,
        generation: u64,
    ) -> Result<StatusReport, RpcError> {
        self.engine
            .status_wait(&filter, generation, &self.identity(), self.caller())
            .await
    }

    async fn cache_steps(
        self,
        _: Context,
        build: BuildId,
        max: bool,
    ) -> Result<Vec<memobuild_proto::CacheStep>, RpcError> {
        self.engine.cache_steps(build, max, self.caller()).await
    }

    async fn check(
        self,
        _: Context,
        mut request: BuildRequest,
    ) -> Result<memobuild_proto::LintReport, RpcError> {
        // Read with the rights of who connected, as a build reads, and for
        // them: never the owner the client says (it picks the images the
        // plan may read and whose git checkouts a plan without agent reuses).
        request.read_as = self.reader.clone();
        request.owner = Some(self.peer_uid);
        if !std::path::Path::new(&request.context).is_absolute() {
            return Err(RpcError::of(
                ErrorKind::InvalidInput,
                "the build context must be an absolute path",
            ));
        }
        self.engine.check(request).await
    }

    async fn import_cache_steps(
        self,
        _: Context,
        steps: Vec<memobuild_proto::CacheStep>,
    ) -> Result<u64, RpcError> {
        self.engine.import_cache_steps(steps, self.caller()).await
    }
}

impl Server {
    /// Who this connection's requests come from.
    fn caller(&self) -> Caller {
        Caller {
            uid: self.peer_uid,
            admin: self.admin,
        }
    }

    fn identity(&self) -> DaemonIdentity {
        DaemonIdentity {
            pid: self.info.pid,
            version: self.info.daemon_version.clone(),
        }
    }
}
