//! `grpc.AgentService`: a thin table of handlers. Each decodes the request,
//! calls the sandbox/container domain code and encodes the answer; errors map
//! to ttrpc codes (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, ...). RPCs that
//! later issues fill in answer UNIMPLEMENTED with their name (kata's generated
//! default would say NOT_FOUND, which a shim reads as "no such container").

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protos::agent::*;
use protos::agent_ttrpc::AgentService;
use protos::empty::Empty;
use ttrpc::r#async::TtrpcContext;

use super::unimplemented;
use crate::container::RuntimeError;
use crate::copy_file::CopyFiles;
use crate::network::{IpTables, Network, NetworkError, RtNetlink};
use crate::policy::AgentPolicy;
use crate::process::StdStream;
use crate::sandbox::Sandbox;

/// The agent service over the sandbox runtime.
pub struct AgentRpc {
    sandbox: Arc<Sandbox>,
    policy: Arc<AgentPolicy>,
    copies: Arc<CopyFiles>,
    network: Network,
    iptables: IpTables,
}

impl AgentRpc {
    pub fn new(sandbox: Arc<Sandbox>, policy: Arc<AgentPolicy>) -> AgentRpc {
        let copies = Arc::new(CopyFiles::new(sandbox.storage_base()));
        let iptables = IpTables::new(sandbox.reaper().clone());
        AgentRpc { sandbox, policy, copies, network: Network::new(RtNetlink::new()), iptables }
    }
}

fn status(err: RuntimeError) -> ttrpc::Error {
    let code = match &err {
        RuntimeError::NotFound(_) => ttrpc::Code::NOT_FOUND,
        RuntimeError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
        RuntimeError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
        RuntimeError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
        RuntimeError::DeadlineExceeded(_) => ttrpc::Code::DEADLINE_EXCEEDED,
        RuntimeError::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
        RuntimeError::Unavailable(_) => ttrpc::Code::UNAVAILABLE,
        RuntimeError::Internal(_) => ttrpc::Code::INTERNAL,
    };
    tracing::warn!(error = %err, ?code, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
}

/// Network errors as runtime errors: a kernel EINVAL/ERANGE is the request's
/// fault, "Link not found" keeps kata's text (the Go runtime matches on it).
fn net_status(err: NetworkError) -> ttrpc::Error {
    let text = err.to_string();
    status(match err {
        NetworkError::InvalidArgument(_) => RuntimeError::InvalidArgument(text),
        NetworkError::LinkNotFound(_) => RuntimeError::NotFound(text),
        NetworkError::FailedPrecondition(_) => RuntimeError::FailedPrecondition(text),
        NetworkError::DeadlineExceeded(_) => RuntimeError::DeadlineExceeded(text),
        NetworkError::Kernel { errno: Some(libc::EINVAL | libc::ERANGE), .. } => RuntimeError::InvalidArgument(text),
        NetworkError::Kernel { errno: Some(libc::EEXIST), .. } => RuntimeError::AlreadyExists(text),
        NetworkError::Kernel { .. } | NetworkError::Internal(_) => RuntimeError::Internal(text),
    })
}

fn missing(what: &str) -> ttrpc::Error {
    status(RuntimeError::InvalidArgument(format!("{what} is missing")))
}

fn io_status(what: &str, err: std::io::Error) -> ttrpc::Error {
    status(RuntimeError::Internal(format!("{what}: {err}")))
}

/// Runs a blocking domain call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static) -> ttrpc::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| status(RuntimeError::Internal(format!("task: {e}"))))?
        .map_err(status)
}

impl AgentRpc {
    async fn read(&self, req: ReadStreamRequest, which: StdStream) -> ttrpc::Result<ReadStreamResponse> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let data = p.read(which, req.len as usize).await.map_err(|e| io_status("read stream", e))?;
        Ok(ReadStreamResponse { data, ..Default::default() })
    }
}

#[async_trait]
impl AgentService for AgentRpc {
    async fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.create(&req).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn destroy_sandbox(&self, _ctx: &TtrpcContext, _req: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.destroy().await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn create_container(&self, _ctx: &TtrpcContext, req: CreateContainerRequest) -> ttrpc::Result<Empty> {
        self.sandbox.create_container(req).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn start_container(&self, _ctx: &TtrpcContext, req: StartContainerRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        c.start().await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn remove_container(&self, _ctx: &TtrpcContext, req: RemoveContainerRequest) -> ttrpc::Result<Empty> {
        let timeout = (req.timeout != 0).then(|| Duration::from_secs(req.timeout.into()));
        self.sandbox.remove_container(&req.container_id, timeout).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        let process = req
            .process
            .into_option()
            .ok_or_else(|| status(RuntimeError::InvalidArgument("ExecProcess without a process".into())))?;
        c.exec(self.sandbox.reaper(), &req.exec_id, process).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        c.signal(&req.exec_id, req.signal as i32).map_err(status)?;
        Ok(Empty::new())
    }

    async fn wait_process(&self, _ctx: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        let code = c.wait(&req.exec_id).await.map_err(status)?;
        Ok(WaitProcessResponse { status: code, ..Default::default() })
    }

    async fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        if let Some(res) = req.resources.as_ref() {
            c.update(res).map_err(status)?;
        }
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        // File reads of a busy cgroup can be slow; keep them off the reactor.
        let stats = tokio::task::spawn_blocking(move || c.stats())
            .await
            .map_err(|e| io_status("stats", std::io::Error::other(e)))?;
        Ok(StatsContainerResponse { cgroup_stats: Some(stats).into(), ..Default::default() })
    }

    async fn pause_container(&self, _ctx: &TtrpcContext, req: PauseContainerRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        // Freezing polls the kernel until every task stopped: off the reactor.
        blocking(move || c.pause()).await?;
        Ok(Empty::new())
    }

    async fn resume_container(&self, _ctx: &TtrpcContext, req: ResumeContainerRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        blocking(move || c.resume()).await?;
        Ok(Empty::new())
    }

    async fn write_stdin(&self, _ctx: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let len = p.write_stdin(&req.data).await.map_err(|e| io_status("write stdin", e))?;
        Ok(WriteStreamResponse { len: len as u32, ..Default::default() })
    }

    async fn read_stdout(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(req, StdStream::Stdout).await
    }

    async fn read_stderr(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(req, StdStream::Stderr).await
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        c.process(&req.exec_id).map_err(status)?.close_stdin().await;
        Ok(Empty::new())
    }

    async fn tty_win_resize(&self, _ctx: &TtrpcContext, req: TtyWinResizeRequest) -> ttrpc::Result<Empty> {
        let c = self.sandbox.container(&req.container_id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let (rows, cols) = (req.row.min(u16::MAX.into()) as u16, req.column.min(u16::MAX.into()) as u16);
        p.resize_tty(rows, cols).map_err(|e| status(RuntimeError::InvalidArgument(format!("resize tty: {e}"))))?;
        Ok(Empty::new())
    }

    async fn get_oom_event(&self, _ctx: &TtrpcContext, _req: GetOOMEventRequest) -> ttrpc::Result<OOMEvent> {
        let id = self.sandbox.next_oom_event().await.map_err(status)?;
        Ok(OOMEvent { container_id: id, ..Default::default() })
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        Ok(crate::guest_details::collect(&req))
    }

    async fn update_ephemeral_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "UpdateEphemeralMounts"))
    }
    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "RemoveStaleVirtiofsShareMounts"))
    }
    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<protos::types::Interface> {
        let iface = req.interface.into_option().ok_or_else(|| missing("UpdateInterface's interface"))?;
        self.network.update_interface(&iface).await.map_err(net_status)
    }

    async fn update_routes(&self, _ctx: &TtrpcContext, req: UpdateRoutesRequest) -> ttrpc::Result<Routes> {
        let routes = req.routes.into_option().ok_or_else(|| missing("UpdateRoutes' routes"))?;
        let list = self.network.update_routes(&routes.Routes).await.map_err(net_status)?;
        Ok(Routes { Routes: list, ..Default::default() })
    }

    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: ListInterfacesRequest) -> ttrpc::Result<Interfaces> {
        let list = self.network.list_interfaces().await.map_err(net_status)?;
        Ok(Interfaces { Interfaces: list, ..Default::default() })
    }

    async fn list_routes(&self, _ctx: &TtrpcContext, _req: ListRoutesRequest) -> ttrpc::Result<Routes> {
        let list = self.network.list_routes().await.map_err(net_status)?;
        Ok(Routes { Routes: list, ..Default::default() })
    }

    async fn add_arp_neighbors(&self, _ctx: &TtrpcContext, req: AddARPNeighborsRequest) -> ttrpc::Result<Empty> {
        let neighbors = req.neighbors.into_option().ok_or_else(|| missing("AddARPNeighbors' neighbors"))?;
        self.network.add_arp_neighbors(&neighbors.ARPNeighbors).await.map_err(net_status)?;
        Ok(Empty::new())
    }

    async fn get_ip_tables(&self, _ctx: &TtrpcContext, req: GetIPTablesRequest) -> ttrpc::Result<GetIPTablesResponse> {
        let data = self.iptables.save(req.is_ipv6).await.map_err(net_status)?;
        Ok(GetIPTablesResponse { data, ..Default::default() })
    }

    async fn set_ip_tables(&self, _ctx: &TtrpcContext, req: SetIPTablesRequest) -> ttrpc::Result<SetIPTablesResponse> {
        let data = self.iptables.restore(req.is_ipv6, req.data).await.map_err(net_status)?;
        Ok(SetIPTablesResponse { data, ..Default::default() })
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::GetMetricsRequest,
    ) -> ttrpc::Result<protos::agent::Metrics> {
        let metrics = crate::metrics::prometheus(&self.sandbox, &self.policy);
        Ok(protos::agent::Metrics { metrics, ..Default::default() })
    }
    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::MemAgentMemcgConfig,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "MemAgentMemcgSet"))
    }
    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::MemAgentCompactConfig,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "MemAgentCompactSet"))
    }
    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "OnlineCPUMem"))
    }
    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: protos::agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        blocking(move || crate::reseed::reseed(std::path::Path::new(crate::reseed::URANDOM), &req.data)).await?;
        Ok(Empty::new())
    }
    async fn mem_hotplug_by_probe(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::MemHotplugByProbeRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "MemHotplugByProbe"))
    }
    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: protos::agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        crate::guest_clock::set(req.Sec, req.Usec).map_err(status)?;
        Ok(Empty::new())
    }
    async fn copy_file(
        &self,
        _ctx: &TtrpcContext,
        req: protos::agent::CopyFileRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        let copies = self.copies.clone();
        blocking(move || copies.copy(&req)).await?;
        Ok(Empty::new())
    }
    async fn add_swap(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::AddSwapRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "AddSwap"))
    }
    async fn add_swap_path(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::AddSwapPathRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "AddSwapPath"))
    }
    async fn get_diagnostic_data(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::GetDiagnosticDataRequest,
    ) -> ttrpc::Result<protos::agent::GetDiagnosticDataResponse> {
        Err(unimplemented(protos::AGENT_SERVICE, "GetDiagnosticData"))
    }
    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: protos::agent::VolumeStatsRequest,
    ) -> ttrpc::Result<protos::csi::VolumeStatsResponse> {
        let base = self.sandbox.storage_base().to_path_buf();
        blocking(move || crate::volume_stats::stats(&base, &req.volume_guest_path)).await
    }
    async fn resize_volume(
        &self,
        _ctx: &TtrpcContext,
        _req: protos::agent::ResizeVolumeRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        Err(unimplemented(protos::AGENT_SERVICE, "ResizeVolume"))
    }
    /// Reached only when the policy in force allowed this SetPolicyRequest.
    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        req: protos::agent::SetPolicyRequest,
    ) -> ttrpc::Result<protos::empty::Empty> {
        let policy = self.policy.clone();
        let info = tokio::task::spawn_blocking(move || policy.set_policy(&req.policy))
            .await
            .map_err(|e| status(RuntimeError::Internal(format!("task: {e}"))))?
            .map_err(|e| status(RuntimeError::InvalidArgument(e.to_string())))?;
        tracing::info!(target: crate::policy::audit::TARGET, sha256 = %info.sha256, "policy replaced by SetPolicy");
        Ok(Empty::new())
    }
}
