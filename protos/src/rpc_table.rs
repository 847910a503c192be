//! One table of every RPC of `grpc.AgentService` and `grpc.Health`, for code
//! that must handle each method by name (the host client's dispatch, the
//! agent's policy input, tests). The `rpc_table` test checks it against the
//! generated service descriptors, so it cannot drift from the .proto files.
//!
//! Use: `protos::with_agent_rpcs!(my_macro)` expands to
//! `my_macro! { Name snake_name RequestType => ResponseType; ... }` in the
//! order of the service definition.

/// Calls `$callback! { Name snake_name Req => Resp; ... }` for `grpc.AgentService`.
#[macro_export]
macro_rules! with_agent_rpcs {
    ($callback:ident) => {
        $callback! {
            CreateContainer create_container $crate::agent::CreateContainerRequest => $crate::empty::Empty;
            StartContainer start_container $crate::agent::StartContainerRequest => $crate::empty::Empty;
            RemoveContainer remove_container $crate::agent::RemoveContainerRequest => $crate::empty::Empty;
            ExecProcess exec_process $crate::agent::ExecProcessRequest => $crate::empty::Empty;
            SignalProcess signal_process $crate::agent::SignalProcessRequest => $crate::empty::Empty;
            WaitProcess wait_process $crate::agent::WaitProcessRequest => $crate::agent::WaitProcessResponse;
            UpdateContainer update_container $crate::agent::UpdateContainerRequest => $crate::empty::Empty;
            UpdateEphemeralMounts update_ephemeral_mounts $crate::agent::UpdateEphemeralMountsRequest => $crate::empty::Empty;
            StatsContainer stats_container $crate::agent::StatsContainerRequest => $crate::agent::StatsContainerResponse;
            PauseContainer pause_container $crate::agent::PauseContainerRequest => $crate::empty::Empty;
            ResumeContainer resume_container $crate::agent::ResumeContainerRequest => $crate::empty::Empty;
            RemoveStaleVirtiofsShareMounts remove_stale_virtiofs_share_mounts $crate::agent::RemoveStaleVirtiofsShareMountsRequest => $crate::empty::Empty;
            GetDiagnosticData get_diagnostic_data $crate::agent::GetDiagnosticDataRequest => $crate::agent::GetDiagnosticDataResponse;
            WriteStdin write_stdin $crate::agent::WriteStreamRequest => $crate::agent::WriteStreamResponse;
            ReadStdout read_stdout $crate::agent::ReadStreamRequest => $crate::agent::ReadStreamResponse;
            ReadStderr read_stderr $crate::agent::ReadStreamRequest => $crate::agent::ReadStreamResponse;
            CloseStdin close_stdin $crate::agent::CloseStdinRequest => $crate::empty::Empty;
            TtyWinResize tty_win_resize $crate::agent::TtyWinResizeRequest => $crate::empty::Empty;
            UpdateInterface update_interface $crate::agent::UpdateInterfaceRequest => $crate::types::Interface;
            UpdateRoutes update_routes $crate::agent::UpdateRoutesRequest => $crate::agent::Routes;
            ListInterfaces list_interfaces $crate::agent::ListInterfacesRequest => $crate::agent::Interfaces;
            ListRoutes list_routes $crate::agent::ListRoutesRequest => $crate::agent::Routes;
            AddARPNeighbors add_arp_neighbors $crate::agent::AddARPNeighborsRequest => $crate::empty::Empty;
            GetIPTables get_ip_tables $crate::agent::GetIPTablesRequest => $crate::agent::GetIPTablesResponse;
            SetIPTables set_ip_tables $crate::agent::SetIPTablesRequest => $crate::agent::SetIPTablesResponse;
            GetMetrics get_metrics $crate::agent::GetMetricsRequest => $crate::agent::Metrics;
            MemAgentMemcgSet mem_agent_memcg_set $crate::agent::MemAgentMemcgConfig => $crate::empty::Empty;
            MemAgentCompactSet mem_agent_compact_set $crate::agent::MemAgentCompactConfig => $crate::empty::Empty;
            CreateSandbox create_sandbox $crate::agent::CreateSandboxRequest => $crate::empty::Empty;
            DestroySandbox destroy_sandbox $crate::agent::DestroySandboxRequest => $crate::empty::Empty;
            OnlineCPUMem online_cpu_mem $crate::agent::OnlineCPUMemRequest => $crate::empty::Empty;
            ReseedRandomDev reseed_random_dev $crate::agent::ReseedRandomDevRequest => $crate::empty::Empty;
            GetGuestDetails get_guest_details $crate::agent::GuestDetailsRequest => $crate::agent::GuestDetailsResponse;
            MemHotplugByProbe mem_hotplug_by_probe $crate::agent::MemHotplugByProbeRequest => $crate::empty::Empty;
            SetGuestDateTime set_guest_date_time $crate::agent::SetGuestDateTimeRequest => $crate::empty::Empty;
            CopyFile copy_file $crate::agent::CopyFileRequest => $crate::empty::Empty;
            GetOOMEvent get_oom_event $crate::agent::GetOOMEventRequest => $crate::agent::OOMEvent;
            AddSwap add_swap $crate::agent::AddSwapRequest => $crate::empty::Empty;
            AddSwapPath add_swap_path $crate::agent::AddSwapPathRequest => $crate::empty::Empty;
            GetVolumeStats get_volume_stats $crate::agent::VolumeStatsRequest => $crate::csi::VolumeStatsResponse;
            ResizeVolume resize_volume $crate::agent::ResizeVolumeRequest => $crate::empty::Empty;
            SetPolicy set_policy $crate::agent::SetPolicyRequest => $crate::empty::Empty;        }
    };
}

/// Calls `$callback! { Name snake_name Req => Resp; ... }` for `grpc.Health`.
#[macro_export]
macro_rules! with_health_rpcs {
    ($callback:ident) => {
        $callback! {
            Check check $crate::health::CheckRequest => $crate::health::HealthCheckResponse;
            Version version $crate::health::CheckRequest => $crate::health::VersionCheckResponse;
        }
    };
}
