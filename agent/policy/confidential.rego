# confidential.rego: the agent's default policy in the guest image
# (installed as /etc/kata-opa/default-policy.rego).
#
# It keeps the host out of what runs in the guest: no exec into containers, no
# reading or writing an exec'd process's stdio, no CopyFile outside kata's
# shared tree, no hooks, no guest hook path, no kernel modules, no clock,
# memory or CPU changes from the host, no SetPolicy; and every mount, storage,
# namespace, device and sysctl of a container must be on the allow-lists in
# `policy_data`. It allows the pod lifecycle a kata shim drives.
#
# What it cannot know is the pod itself: the container's command line,
# environment and image come from the host. Pin those with a pod-specific
# policy (kata's genpolicy output has this same shape: rules over
# `policy_data`) delivered in the measured initdata, which replaces this file.
package agent_policy

import rego.v1

# ---------------------------------------------------------------- defaults ---
# The pod lifecycle, and requests that neither reveal tenant data nor change
# what runs in the guest.
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default StatsContainerRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
default UpdateContainerRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default GetMetricsRequest := true
default TtyWinResizeRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true

# The pod network: the host owns it anyway (the tenant must protect its
# traffic end to end), so configuring it is allowed.
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default AddARPNeighborsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true

# Decided by the rules below; denied unless a rule allows.
default CreateSandboxRequest := false
default CreateContainerRequest := false
default CopyFileRequest := false
default ReadStreamRequest := false

# Denied: each would let the host reach into the guest.
default ExecProcessRequest := false
default WriteStreamRequest := false
default CloseStdinRequest := false
default SetPolicyRequest := false
default SetGuestDateTimeRequest := false
default MemHotplugByProbeRequest := false
default OnlineCPUMemRequest := false
default ReseedRandomDevRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default GetIPTablesRequest := false
default SetIPTablesRequest := false
default GetDiagnosticDataRequest := false
default UpdateEphemeralMountsRequest := false
default VolumeStatsRequest := false
default ResizeVolumeRequest := false
default MemAgentMemcgConfig := false
default MemAgentCompactConfig := false

default AllowRequestsFailingPolicy := false

# ------------------------------------------------------------- allow-lists ---
policy_data := {
	"shared_files": "/run/kata-containers/shared/containers/",
	"storage_base": "/run/kata-containers/",
	"sandbox_storages": [{
		"driver": "ephemeral",
		"source": "shm",
		"fstype": "tmpfs",
		"mount_point": "/run/kata-containers/sandbox/shm",
	}],
	"container_storage_drivers": ["image_guest_pull", "ephemeral", "local"],
	# Container root filesystems: pulled in the guest, or shipped in the image.
	"root_prefixes": ["/run/kata-containers/", "/usr/share/cvm/"],
	# Bind mount sources: what CopyFile and the sandbox put there.
	"bind_sources": ["/run/kata-containers/shared/containers/", "/run/kata-containers/sandbox/"],
	# Kernel filesystems a container may mount, with options they must carry.
	"fs_mounts": {
		"proc": {"destination": "/proc", "options": []},
		"sysfs": {"destination": "/sys", "options": ["ro"]},
		"cgroup": {"destination": "/sys/fs/cgroup", "options": ["ro"]},
		"cgroup2": {"destination": "/sys/fs/cgroup", "options": ["ro"]},
		"devpts": {"destination": "/dev/pts", "options": []},
		"mqueue": {"destination": "/dev/mqueue", "options": []},
	},
	# Kubernetes' safe sysctls (namespaced, no effect outside the pod).
	"sysctls": [
		"kernel.shm_rmid_forced",
		"net.ipv4.ip_local_port_range",
		"net.ipv4.ip_local_reserved_ports",
		"net.ipv4.ip_unprivileged_port_start",
		"net.ipv4.ping_group_range",
		"net.ipv4.tcp_syncookies",
		"net.ipv4.tcp_keepalive_time",
		"net.ipv4.tcp_keepalive_intvl",
		"net.ipv4.tcp_keepalive_probes",
		"net.ipv4.tcp_fin_timeout",
	],
	# The container runtimes' default capability set; nothing beyond it.
	"capabilities": [
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	],
}

# ----------------------------------------------------------------- sandbox ---
# Each rule below allows when its list of denials is empty, and prints the
# denials otherwise (the agent returns the prints with PERMISSION_DENIED).
CreateSandboxRequest if count(sandbox_denials) == 0

CreateSandboxRequest if {
	count(sandbox_denials) > 0
	print("CreateSandboxRequest denied:", concat("; ", sandbox_denials))
	false
}

sandbox_denials contains "guest_hook_path is not allowed" if input.guest_hook_path != ""

sandbox_denials contains "kernel_modules are not allowed" if count(input.kernel_modules) > 0

sandbox_denials contains msg if {
	some s in input.storages
	not sandbox_storage_allowed(s)
	msg := sprintf("storage %s %s -> %s is not allowed", [s.driver, s.source, s.mount_point])
}

sandbox_storage_allowed(s) if {
	some p in policy_data.sandbox_storages
	s.driver == p.driver
	s.source == p.source
	s.fstype == p.fstype
	s.mount_point == p.mount_point
}

# --------------------------------------------------------------- container ---
CreateContainerRequest if count(container_denials) == 0

CreateContainerRequest if {
	count(container_denials) > 0
	print("CreateContainerRequest denied:", concat("; ", container_denials))
	false
}

container_denials contains "the request has no OCI spec" if is_null(input.OCI)

container_denials contains "OCI hooks are not allowed" if {
	not is_null(input.OCI)
	not no_hooks(input.OCI.Hooks)
}

container_denials contains msg if {
	not is_null(input.OCI)
	path := object.get(input.OCI, ["Root", "Path"], "")
	not root_allowed(path)
	msg := sprintf("root path %q is not allowed", [path])
}

container_denials contains msg if {
	some m in input.OCI.Mounts
	not mount_allowed(m)
	msg := sprintf("mount %s %s -> %s %v is not allowed", [m.type_, m.source, m.destination, m.options])
}

container_denials contains msg if {
	some s in input.storages
	not container_storage_allowed(s)
	msg := sprintf("storage %s -> %s is not allowed", [s.driver, s.mount_point])
}

container_denials contains "devices are not allowed" if count(input.devices) > 0

container_denials contains "devices are not allowed" if count(object.get(input.OCI, ["Linux", "Devices"], [])) > 0

container_denials contains "shared_mounts are not allowed" if count(input.shared_mounts) > 0

container_denials contains msg if {
	some ns in object.get(input.OCI, ["Linux", "Namespaces"], [])
	ns.Path != ""
	msg := sprintf("namespace path %s %q is not allowed", [ns.Type, ns.Path])
}

container_denials contains msg if {
	some name, _ in object.get(input.OCI, ["Linux", "Sysctl"], {})
	not name in policy_data.sysctls
	msg := sprintf("sysctl %s is not allowed", [name])
}

container_denials contains msg if {
	caps := object.get(input.OCI, ["Process", "Capabilities"], null)
	not is_null(caps)
	some set in ["Bounding", "Effective", "Inheritable", "Permitted", "Ambient"]
	some cap in object.get(caps, set, [])
	not cap_allowed(cap)
	msg := sprintf("capability %s (%s) is not allowed", [cap, set])
}

no_hooks(hooks) if is_null(hooks)

no_hooks(hooks) if {
	not is_null(hooks)
	every kind in ["Prestart", "CreateRuntime", "CreateContainer", "StartContainer", "Poststart", "Poststop"] {
		count(object.get(hooks, kind, [])) == 0
	}
}

root_allowed(path) if {
	some prefix in policy_data.root_prefixes
	startswith(path, prefix)
	no_dot_dot(path)
}

# A fresh tmpfs hides nothing and reveals nothing: anywhere but kernel trees.
mount_allowed(m) if {
	m.type_ == "tmpfs"
	not kernel_tree(m.destination)
}

mount_allowed(m) if {
	fs := policy_data.fs_mounts[m.type_]
	m.destination == fs.destination
	every opt in fs.options {
		opt in m.options
	}
}

mount_allowed(m) if {
	m.type_ in ["bind", ""]
	"bind" in m.options
	bind_source_allowed(m.source)
	not kernel_tree(m.destination)
}

mount_allowed(m) if {
	m.type_ == "bind"
	"rbind" in m.options
	bind_source_allowed(m.source)
	not kernel_tree(m.destination)
}

bind_source_allowed(src) if {
	some prefix in policy_data.bind_sources
	startswith(src, prefix)
	no_dot_dot(src)
}

kernel_tree(dest) if {
	some tree in ["/proc", "/sys"]
	under(dest, tree)
}

under(path, tree) if path == tree

under(path, tree) if startswith(path, concat("", [tree, "/"]))

no_dot_dot(path) if {
	not ".." in split(path, "/")
}

container_storage_allowed(s) if {
	s.driver != "image_guest_pull"
	s.driver in policy_data.container_storage_drivers
	startswith(s.mount_point, policy_data.storage_base)
	no_dot_dot(s.mount_point)
}

# As kata's genpolicy: a guest-pulled image is this container's own rootfs,
# in the shape kata's shim sends (overlay, no options, no fsGroup, not shared).
container_storage_allowed(s) if {
	s.driver == "image_guest_pull"
	s.driver in policy_data.container_storage_drivers
	s.fstype == "overlay"
	count(object.get(s, "options", [])) == 0
	is_null(object.get(s, "fs_group", null))
	object.get(s, "shared", false) == false
	s.mount_point == concat("", [policy_data.storage_base, input.container_id, "/rootfs"])
}

cap_allowed(cap) if cap in policy_data.capabilities

cap_allowed(cap) if concat("", ["CAP_", cap]) in policy_data.capabilities

# ------------------------------------------------------------------- files ---
CopyFileRequest if {
	startswith(input.path, policy_data.shared_files)
	no_dot_dot(input.path)
	input.file_type in ["Regular", "Directory"]
}

CopyFileRequest if {
	startswith(input.path, policy_data.shared_files)
	no_dot_dot(input.path)
	input.file_type == "Symlink"
	not startswith(input.symlink_target, "/")
	no_dot_dot(input.symlink_target)
}

# ------------------------------------------------------------------- stdio ---
# Only the output of a container's own process: never of an exec'd one.
ReadStreamRequest if {
	input.exec_id == input.container_id
}

ReadStreamRequest if {
	input.exec_id == ""
}
