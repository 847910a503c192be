//! GetGuestDetails: memory block size, hotplug probe support and what this
//! agent can do. Reads sysfs only. kata's response has no field for the guest
//! components: their state is logged here (and exported by GetMetrics).

use protos::agent::{AgentDetails, GuestDetailsRequest, GuestDetailsResponse};

const MEMORY_SYSFS: &str = "/sys/devices/system/memory";

pub fn collect(req: &GuestDetailsRequest) -> GuestDetailsResponse {
    let mut resp = GuestDetailsResponse::new();
    if req.mem_block_size {
        // The file holds hex without a 0x prefix.
        resp.mem_block_size_bytes = std::fs::read_to_string(format!("{MEMORY_SYSFS}/block_size_bytes"))
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
    }
    if req.mem_hotplug_probe {
        resp.support_mem_hotplug_probe = std::path::Path::new(MEMORY_SYSFS).join("probe").exists();
    }
    let details = AgentDetails {
        version: crate::rpc::AGENT_VERSION.to_string(),
        init_daemon: std::process::id() == 1,
        storage_handlers: vec!["local".into(), "bind".into()],
        supports_seccomp: cfg!(target_arch = "x86_64"),
        ..Default::default()
    };
    resp.agent_details = Some(details).into();
    let components: Vec<String> = crate::components::status::global()
        .snapshot()
        .iter()
        .map(|c| format!("{}={} pid={:?} restarts={}", c.component.name(), c.state.as_str(), c.pid, c.restarts))
        .collect();
    tracing::info!(?components, "GetGuestDetails: guest components");
    resp
}
