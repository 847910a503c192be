#!/bin/sh
# Writes the seed corpora into fuzz/corpus/<target>/ (not committed; libFuzzer
# adds what it finds there): a few inputs per target made from the repo's
# test fixtures and with tar, gzip and zstd. Multi-part inputs separate their
# parts with NUL bytes (see the `fuzzing` modules). Idempotent.
set -eu
cd "$(dirname "$0")"
REPO=$(cd .. && pwd)
command -v python3 >/dev/null || { echo "seed.sh needs python3" >&2; exit 1; }
mkdir -p corpus
python3 - "$REPO" <<'PY'
import base64, gzip, hashlib, io, json, os, struct, sys, tarfile

repo = sys.argv[1]
def put(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
def join(*parts):
    return b"\0".join(p.encode() if isinstance(p, str) else p for p in parts)
def fixture(path):
    with open(os.path.join(repo, path), "rb") as f:
        return f.read()

# --- protobuf by hand (varint, length-delimited) ---
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def fld(num, val):
    if isinstance(val, bool):
        return varint(num << 3) + varint(int(val))
    if isinstance(val, int):
        return varint(num << 3) + varint(val & 0xFFFFFFFFFFFFFFFF)
    if isinstance(val, str):
        val = val.encode()
    return varint(num << 3 | 2) + varint(len(val)) + val
def msg(*fields):
    return b"".join(fld(n, v) for n, v in fields)

# --- agent_request: ttrpc frames over every RPC ---
methods = ["CreateContainer", "StartContainer", "RemoveContainer", "ExecProcess", "SignalProcess", "WaitProcess",
           "UpdateContainer", "StatsContainer", "PauseContainer", "ResumeContainer", "WriteStdin", "ReadStdout",
           "ReadStderr", "CloseStdin", "TtyWinResize", "UpdateInterface", "UpdateRoutes", "ListInterfaces",
           "ListRoutes", "AddARPNeighbors", "GetIPTables", "SetIPTables", "GetMetrics", "CreateSandbox",
           "DestroySandbox", "OnlineCPUMem", "ReseedRandomDev", "GetGuestDetails", "MemHotplugByProbe",
           "SetGuestDateTime", "CopyFile", "GetOOMEvent", "AddSwap", "GetVolumeStats", "ResizeVolume", "SetPolicy"]
def frame(payload, kind=1, stream=1):
    return struct.pack(">IIBB", len(payload), stream, kind, 0) + payload
def request(method, payload=b""):
    return frame(msg((1, "grpc.AgentService"), (2, method), (3, payload), (4, 10**9)))
spec = msg((1, "1.1.0"),
           (2, msg((4, "/bin/sh"), (5, "PATH=/bin"), (6, "/"), (7, msg((1, "CAP_CHOWN"), (2, "CAP_CHOWN"))))),
           (3, msg((1, "/run/kata-containers/c1/rootfs"), (2, True))),
           (5, msg((1, "/proc"), (2, "proc"), (3, "proc"))),
           (5, msg((1, "/dev"), (2, "tmpfs"), (3, "tmpfs"), (4, "nosuid"), (4, "mode=755"))),
           (5, msg((1, "/etc/hosts"), (2, "/run/kata-containers/shared/containers/c1-hosts"), (3, "bind"), (4, "rbind"), (4, "ro"))),
           (8, msg((6, msg((1, "pid"))), (6, msg((1, "mount"))), (6, msg((1, "ipc"))), (6, msg((1, "uts"))),
                   (6, msg((1, "network"), (2, "/var/run/netns/cni-1"))),
                   (3, msg((1, "net.ipv4.ip_forward"), (2, "1"))),
                   (4, msg((1, msg((1, False), (5, "rwm"))), (1, msg((1, True), (2, "c"), (3, 1), (4, 3), (5, "rwm"))))),
                   (7, msg((1, "/dev/fuse"), (2, "c"), (3, 10), (4, 229))),
                   (8, msg((1, "SCMP_ACT_ERRNO"), (4, msg((1, "read"), (1, "write"), (2, "SCMP_ACT_ALLOW"))),
                           (4, msg((1, "personality"), (2, "SCMP_ACT_ALLOW"), (4, msg((1, 0), (2, 8), (4, "SCMP_CMP_EQ"))))))),
                   (9, "rprivate"), (10, "/proc/kcore"), (11, "/proc/sys"))))
for m in methods:
    put("agent_request", m, request(m))
put("agent_request", "CreateContainer-spec", request("CreateContainer", msg((1, "c1"), (2, "e1"), (6, spec))))
put("agent_request", "ExecProcess-sh", request("ExecProcess", msg((1, "c1"), (2, "e2"), (4, msg((4, "/bin/sh"))))))
put("agent_request", "ReadStdout-c1", request("ReadStdout", msg((1, "c1"), (2, "e1"), (3, 4096))))
put("agent_request", "CopyFile-hosts", request("CopyFile", msg((1, "/run/kata-containers/shared/containers/c1-hosts"),
    (2, 9), (3, 0o100644), (4, 0o755), (8, "127.0.0.1"))))
put("agent_request", "CopyFile-symlink", request("CopyFile", msg((1, "/run/kata-containers/shared/containers/c1/..data"),
    (3, 0o120777), (8, "..2024"))))
put("agent_request", "SetPolicy", request("SetPolicy", msg((1, "package agent_policy\ndefault ExecProcessRequest := true\n"))))

# --- flow_frames: frame streams with cut positions in front ---
stream = frame(b"req-one") + frame(b"", kind=2, stream=3) + frame(b"x" * 300, stream=5) + frame(b"data", kind=3, stream=5)
put("flow_frames", "three-cuts", bytes([3]) + struct.pack("<HHH", 1, 12, 40) + stream)
put("flow_frames", "no-cut", bytes([0]) + stream)
put("flow_frames", "partial-header", bytes([1, 5, 0]) + stream + b"\0\0\0")
put("flow_frames", "oversized", bytes([2, 3, 0, 9, 0]) + struct.pack(">IIBB", 5 << 20, 7, 1, 0) + b"abc")

# --- oci_plan: the spec as protobuf (even first byte) and kata JSON (odd) ---
put("oci_plan", "spec-proto", b"\0" + spec)
put("oci_plan", "spec-proto-sandbox-pidns", b"\2" + spec)
put("oci_plan", "spec-json", b"\1" + json.dumps({
    "Version": "1.1.0", "Hostname": "c1",
    "Root": {"Path": "/run/kata-containers/c1/rootfs", "Readonly": False},
    "Mounts": [{"destination": "/proc", "source": "proc", "type": "proc", "options": []},
               {"destination": "/data/../../etc", "source": "/tmp", "type": "bind", "options": ["rbind"]}],
    "Linux": {"Namespaces": [{"Type": "mount", "Path": ""}, {"Type": "ipc", "Path": ""}],
              "MaskedPaths": ["/proc/kcore"], "ReadonlyPaths": ["/proc/sys"], "RootfsPropagation": "rslave",
              "Sysctl": {"kernel.shmmax": "1"}}}).encode())

# --- tar_unpack, decompress: layers ---
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            if kind == "file":
                ti.size = len(arg); ti.mode = 0o644; t.addfile(ti, io.BytesIO(arg))
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE; ti.linkname = arg; t.addfile(ti)
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE; ti.linkname = arg; t.addfile(ti)
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE; ti.devmajor = 0; ti.devminor = 0; t.addfile(ti)
    return buf.getvalue()
layers = {
    "tree": tar([("etc", "dir", None), ("etc/passwd", "file", b"root:x:0:0\n"), ("bin", "dir", None),
                 ("bin/sh", "file", b"\x7fELF"), ("bin/ash", "hard", "bin/sh"), ("usr/bin/env", "sym", "../../bin/sh")]),
    "escape-dotdot": tar([("../outside/x", "file", b"x"), ("a/../../outside/y", "file", b"y")]),
    "escape-symlink": tar([("link", "sym", "../outside"), ("link/pwned", "file", b"p"),
                           ("abs", "sym", "/"), ("abs/outside/pwned2", "file", b"p")]),
    "escape-hardlink": tar([("h", "hard", "../outside/x"), ("lowerlink", "hard", "etc-passwd"), ("lowerlink", "file", b"over")]),
    "whiteouts": tar([("etc", "dir", None), ("etc/.wh.passwd", "file", b""), ("usr/.wh..wh..opq", "file", b""),
                      ("dev/null", "chr", None)]),
}
for name, data in layers.items():
    put("tar_unpack", name, data)
    put("decompress", name + ".gz", b"\0" + gzip.compress(data, mtime=0))
put("decompress", "two-members.gz", b"\0" + gzip.compress(b"a" * 1000, mtime=0) + gzip.compress(b"b", mtime=0))
put("decompress", "zeros.gz", b"\0" + gzip.compress(b"\0" * (1 << 20), mtime=0))

# --- manifest: document, descriptor, blob ---
blob = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:' + b"a" * 64 + b'"]}}'
d = hashlib.sha256(blob).hexdigest()
desc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + d, "size": len(blob)}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": desc,
            "layers": [{"mediaType": mt, "digest": "sha256:" + "b" * 64, "size": 10} for mt in
                       ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd+encrypted",
                        "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+foo+encrypted"]]}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "c" * 64, "size": 500,
     "platform": {"architecture": a, "os": "linux", **({"variant": v} if v else {})}} for a, v in
    [("arm64", "v8"), ("amd64", None), ("arm", "v7")]]}
put("manifest", "manifest", join(json.dumps(manifest), json.dumps(desc), blob))
put("manifest", "index", join(json.dumps(index), json.dumps(dict(desc, size=len(blob) + 1)), blob))
put("manifest", "config", join(blob, json.dumps(dict(desc, digest="sha256:" + d.upper())), blob))
put("manifest", "docker-list", join(json.dumps(dict(index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")),
                                    json.dumps(dict(desc, digest="sha512:" + "0" * 128)), blob))

# --- sig_policy: policy.json, registries.d, registries.conf, reference ---
regd = ("default-docker:\n  lookaside: https://sigs.example/default\n"
        "docker:\n  reg.example:5000/app:\n    lookaside: file:///var/lib/sigs\n    use-sigstore-attachments: true\n")
regconf = ('unqualified-search-registries = ["docker.io"]\n[[registry]]\nprefix = "reg.example:5000"\n'
           'location = "mirror.example/app"\ninsecure = true\n[[registry.mirror]]\nlocation = "m2.example"\n'
           '[[registry]]\nprefix = "blocked.example"\nblocked = true\n')
for p in ["insecure-accept-anything.json", "locked-down.json", "locked-down-sigstore-fulcio.json"]:
    pol = fixture("image-rs/tests/fixtures/policy/" + p)
    for i, ref in enumerate(["reg.example:5000/app:v1", "busybox", "blocked.example/x@sha256:" + "d" * 64]):
        put("sig_policy", f"{p}-{i}", join(pol, regd, regconf, ref))

# --- signatures: payload, key blob, base64 signature ---
payload = fixture("image-rs/tests/fixtures/pgp/payload.json")
owner = fixture("image-rs/tests/fixtures/pgp/owner.asc")
put("signatures", "simple-signing", join(payload, owner, "MEUCIQ=="))
put("signatures", "cosign", join(json.dumps({"critical": {"identity": {"docker-reference": "reg.example/app"},
    "image": {"docker-manifest-digest": "sha256:" + "e" * 64}, "type": "cosign container image signature"},
    "optional": None}), "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    base64.b64encode(b"0\x44\x02\x20" + b"\x01" * 32 + b"\x02\x20" + b"\x02" * 32).decode()))
put("signatures", "gpg-signature", join(fixture("image-rs/tests/fixtures/pgp/signature-1"), fixture("image-rs/tests/fixtures/pgp/other.asc"), ""))

# --- ocicrypt: keys annotation, pubopts annotation, JWE ---
a1 = json.loads(fixture("attestation-agent/deps/crypto/tests/data/rfc7516-a1.json"))
compact = next((v for v in a1.values() if isinstance(v, str) and v.count(".") == 4), "")
pubopts = base64.b64encode(json.dumps({"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": base64.b64encode(b"\1" * 32).decode(),
                                       "cipheroptions": {}}).encode()).decode()
flat = json.dumps({"protected": "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ", "encrypted_key": "AAAA",
                   "iv": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA", "tag": "AAAAAAAAAAAAAAAAAAAAAA"})
put("ocicrypt", "flattened", join(base64.b64encode(flat.encode()).decode(), pubopts, flat))
put("ocicrypt", "two-packets", join(base64.b64encode(flat.encode()).decode() + "," + base64.b64encode(b"{}").decode(), pubopts, compact))
put("ocicrypt", "general", join("", pubopts, json.dumps({"protected": "eyJlbmMiOiJBMjU2R0NNIn0", "recipients": [
    {"header": {"alg": "ECDH-ES+A256KW", "epk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}, "encrypted_key": "AAAA"}],
    "iv": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA", "tag": "AAAAAAAAAAAAAAAAAAAAAA"})))

# --- kbs_rcar: challenge, token, error, cookie, uri, resource JWE ---
def b64u(o):
    return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()
token = b64u({"alg": "HS256"}) + "." + b64u({"exp": 1900000000}) + ".sig"
put("kbs_rcar", "happy", join(json.dumps({"nonce": "bm9uY2U", "extra-params": {"selected-hash-algorithm": "sha384"}}),
    json.dumps({"token": token}), json.dumps({"type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
    "detail": "denied"}), "kbs-session-id=abc123; Path=/; HttpOnly", "kbs:///default/key/one", flat))
put("kbs_rcar", "odd", join(json.dumps({"nonce": "", "extra-params": {"selected-hash-algorithm": 5}}),
    json.dumps({"token": "a.b"}), "not json", 'kbs-session-id="x;y"', "kbs://host/../a/b", compact))

# --- initdata: device images and documents ---
doc = ('version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = \'\'\'\n[token_configs.kbs]\nurl = "https://kbs.example"\n\'\'\'\n'
       '"policy.rego" = "package agent_policy\\ndefault ExecProcessRequest := false\\n"\n')
put("initdata", "document", doc)
gz = gzip.compress(doc.encode(), mtime=0)
img = b"initdata" + struct.pack("<Q", len(gz)) + gz
put("initdata", "device", img + b"\0" * (-len(img) % 512))
put("initdata", "device-bad-len", b"initdata" + struct.pack("<Q", 1 << 40) + gz)
put("initdata", "sha512", doc.replace("sha384", "sha512"))

# --- configs: aa.toml, cdh.toml, agent config / kernel command line ---
put("configs", "aa.toml", '[token_configs.kbs]\nurl = "https://kbs.example:8080"\ncert = "-----BEGIN CERTIFICATE-----"\n'
    '[kbs]\ntee_key = "rsa-2048"\n[attester]\nkind = "auto"\n')
put("configs", "aa-insecure.toml", '[token_configs.kbs]\nurl = "HTTP://kbs.example"\ninsecure_http = false\n')
put("configs", "cmdline", "console=ttyS0 agent.aa_kbc_params=cc_kbc::https://kbs.example agent.log=debug "
    "agent.server_addr=vsock://-1:1024 agent.debug_console agent.log_vport=1025 agent.unified_cgroup_hierarchy=0")
put("configs", "cdh.toml", 'socket = "unix:///run/confidential-containers/cdh.sock"\n[kbc]\nname = "cc_kbc"\n'
    'url = "https://kbs.example"\n[image]\nmax_concurrent_layer_downloads_per_image = 3\npull_deadline_secs = 0\n'
    'image_security_policy_uri = "kbs:///default/security-policy/test"\n[image.image_pull_proxy]\nhttps_proxy = "http://proxy:3128"\n')
put("configs", "agent.toml", 'server_addr = "unix:///run/agent.sock"\nlog_level = "warn"\ndebug_console = false\nlog_vport = 0\n')
PY
# zstd layers (the tool, when present; the decoder also sees the gzip seeds).
if command -v zstd >/dev/null; then
  for f in corpus/tar_unpack/*; do
    n=$(basename "$f")
    { printf '\001'; zstd -q -c "$f"; } > "corpus/decompress/$n.zst"
  done
  { printf '\001'; head -c 1048576 /dev/zero | zstd -q -19 -c; } > corpus/decompress/zeros.zst
fi
# Committed regression inputs are seeds too.
for d in regressions/*/; do
  [ -d "$d" ] || continue
  t=$(basename "$d"); mkdir -p "corpus/$t"; cp "$d"* "corpus/$t/" 2>/dev/null || true
done
echo "seeds: $(find corpus -type f | wc -l) files, $(du -sh corpus | cut -f1)"
