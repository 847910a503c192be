#!/usr/bin/env python3
"""Deterministic synthetic OCI image for the image-pull benchmark.

    gen_image.py OUT_LAYOUT_DIR [--size-mb 500] [--layers 5] [--files 4000] [--seed 20240501] [--tag 1]

Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) whose
layers are gzip (level 6, the docker/containerd default) tar streams, plus
OUT_LAYOUT_DIR/bench-image.json describing the image's shape.

Content is meant to compress like real software, not like zeros or noise:
  * text-like files (source, headers, JSON, scripts): lines of identifiers,
    keywords and punctuation drawn from a fixed vocabulary (gzip ~3-4x);
  * binary-like files (.so, executables): skewed byte distribution with
    repeated, slightly mutated segments and a few zero-padded regions, like
    machine code and ELF sections (gzip ~2x);
  * already-compressed files (.gz, .png, .jar): random bytes (gzip ~1x).
File sizes are log-normal (many small files) plus a few large files per
layer, which carry most of the bytes, as in real images. Layers also hold
directories, symlinks, intra-layer hardlinks, and upper layers hold a few
whiteouts (deleted files) and one opaque directory.

Everything derives from --seed: same Python version + same arguments -> same
bytes (tar mtimes, owners and gzip headers are fixed).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
from multiprocessing import Pool

MTIME = 1700000000  # fixed, for reproducible tars

# --------------------------------------------------------------------------- content

KEYWORDS = (
    "if else for while return static const struct enum impl fn let mut pub use mod def class "
    "import from self None True False int char void unsigned long size_t uint8_t uint32_t "
    "switch case break continue default match where async await try except finally raise "
    "function var new this typeof null undefined export require module package func go"
).split()
PUNCT = ["(", ")", "{", "}", "[", "]", ";", ",", ".", "->", "=>", "::", "=", "==", "!=", "+", "-",
         "*", "&", "|", "<", ">", ":", "#", "//", "/*", "*/", "\"", "'"]


def make_vocab(rng):
    sylls = ["get", "set", "buf", "len", "ptr", "ctx", "err", "str", "init", "free", "alloc", "read",
             "write", "open", "close", "node", "list", "map", "hash", "key", "val", "data", "info",
             "conf", "log", "msg", "req", "resp", "sock", "file", "path", "name", "type", "id",
             "count", "index", "tmp", "flag", "mode", "size", "offset", "state", "handle", "cb",
             "parse", "dump", "check", "update", "lock", "queue", "item", "entry", "table", "row"]
    idents = set()
    while len(idents) < 3000:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        parts = [rng.choice(sylls) for _ in range(n)]
        style = rng.random()
        if style < 0.5:
            idents.add("_".join(parts))
        elif style < 0.8:
            idents.add(parts[0] + "".join(p.capitalize() for p in parts[1:]))
        else:
            idents.add("".join(p.capitalize() for p in parts))
    idents = sorted(idents)
    numbers = [str(rng.randrange(0, 1 << rng.choice((4, 8, 16, 32)))) for _ in range(400)]
    hexes = ["0x%08x" % rng.getrandbits(32) for _ in range(300)]
    tokens = idents + KEYWORDS * 20 + PUNCT * 40 + numbers + hexes
    # Zipf-like weights: a few tokens are very common, most are rare.
    weights = [1.0 / (1 + i) ** 0.9 for i in range(len(tokens))]
    order = list(range(len(tokens)))
    rng.shuffle(order)
    tokens = [tokens[i] for i in order]
    return tokens, weights


def text_bytes(rng, vocab, size):
    tokens, weights = vocab
    out = []
    total = 0
    indent = 0
    # ~8 tokens per line, indentation that wanders, occasional blank/comment lines.
    while total < size:
        ntok = rng.randint(1, 2000)
        toks = rng.choices(tokens, weights, k=ntok)
        lines = []
        i = 0
        while i < len(toks):
            k = rng.randint(2, 14)
            indent = max(0, min(6, indent + rng.choice((-1, 0, 0, 0, 1))))
            lines.append("    " * indent + " ".join(toks[i:i + k]))
            i += k
            if rng.random() < 0.07:
                lines.append("")
        chunk = ("\n".join(lines) + "\n").encode()
        out.append(chunk)
        total += len(chunk)
    return b"".join(out)[:size]


def skew_table(rng):
    # Map uniform bytes to a machine-code-like distribution: lots of 0x00,
    # common opcode/prefix bytes, then everything else.
    common = [0x00] * 60 + [0xff] * 12 + [0x48] * 14 + [0x89] * 10 + [0x8b] * 10 + [0xe8] * 6 + \
             [0x0f] * 8 + [0x24] * 6 + [0x44] * 6 + [0x01] * 6 + [0xc3] * 3 + [0x85] * 4 + [0x74] * 4
    rest = 256 - len(common)
    common += [rng.randrange(256) for _ in range(rest)]
    return bytes(common)


def binary_bytes(rng, table, size):
    out = bytearray()
    segs = []
    while len(out) < size:
        r = rng.random()
        if segs and r < 0.50:
            # repeat an earlier segment, slightly mutated (relocated calls, etc.)
            # mostly recent segments (within gzip's 32 KiB window), sometimes older ones
            s = bytearray(segs[-1 - min(len(segs) - 1, int(rng.expovariate(1 / 24)))])
            for _ in range(max(1, len(s) // 64)):
                s[rng.randrange(len(s))] = rng.randrange(256)
            out += s
        elif r < 0.53:
            out += bytes(rng.choice((64, 256, 1024, 4096)))  # padding
        else:
            n = rng.choice((32, 64, 128, 256, 512, 1024))
            s = rng.randbytes(n).translate(table)
            out += s
            segs.append(s)
            if len(segs) > 512:
                del segs[:256]
    return bytes(out[:size])


def random_bytes(rng, size):
    return rng.randbytes(size)


# --------------------------------------------------------------------------- layers

TEXT_EXT = [".py", ".c", ".h", ".js", ".json", ".txt", ".md", ".conf", ".sh", ".rs", ".go", ".html", ".xml", ".yaml"]
BIN_EXT = [".so", "", ".bin", ".a", ".o", ".pyc", ".node"]
RAND_EXT = [".gz", ".png", ".jar", ".woff2", ".xz"]
TOP = ["usr/lib", "usr/share", "usr/bin", "usr/local/lib", "opt/app", "etc", "var/lib", "srv/www", "usr/include"]


def plan_layer(seed, idx, nlayers, size, nfiles):
    """Returns a list of entries (kind, path, extra) for one layer."""
    rng = random.Random(seed * 1000 + idx)
    words = ["core", "util", "net", "io", "http", "json", "crypto", "db", "ui", "test", "vendor",
             "plugins", "locale", "doc", "examples", "include", "internal", "common", "lib", "src"]
    dirs = []
    for _ in range(max(8, nfiles // 25)):
        d = rng.choice(TOP) + "/" + "/".join(rng.choice(words) + str(rng.randrange(40)) for _ in range(rng.randint(1, 4)))
        dirs.append(f"l{idx}/{d}" if idx else d)  # keep layers mostly disjoint, like real images
    entries = []
    # many small files (log-normal, median ~6 KiB, capped at 1 MiB)...
    nbig = max(2, nfiles // 400)
    small = []
    for _ in range(nfiles - nbig):
        small.append(min(1 << 20, max(0, int(rng.lognormvariate(8.7, 1.6)))))
    small_total = sum(small)
    # ...and a few big files carry the rest (at least 60% of the layer, like real images).
    budget = max(size - small_total, int(size * 0.6))
    if small_total > size - budget:
        scale = (size - budget) / max(1, small_total)
        small = [int(s * scale) for s in small]
    cuts = sorted(rng.random() for _ in range(nbig - 1))
    bigs = [int(budget * (b - a)) for a, b in zip([0.0] + cuts, cuts + [1.0])]
    names = set()

    def fresh(d, ext):
        while True:
            n = f"{d}/{rng.choice(words)}_{rng.randrange(100000)}{ext}"
            if n not in names:
                names.add(n)
                return n

    for s in small + bigs:
        r = rng.random()
        big = s > (1 << 20)
        if big:
            kind = "bin" if r < 0.6 else ("text" if r < 0.85 else "rand")
        else:
            kind = "text" if r < 0.62 else ("bin" if r < 0.93 else "rand")
        ext = rng.choice({"text": TEXT_EXT, "bin": BIN_EXT, "rand": RAND_EXT}[kind])
        mode = 0o755 if kind == "bin" and ext in ("", ".so", ".node") else 0o644
        entries.append(("file", fresh(rng.choice(dirs), ext), (kind, s, mode, rng.getrandbits(64))))
    files = [e[1] for e in entries]
    for _ in range(max(2, nfiles // 100)):
        entries.append(("symlink", fresh(rng.choice(dirs), ".lnk"), os.path.relpath(rng.choice(files), "/x")))
    for _ in range(max(1, nfiles // 400)):
        entries.append(("hardlink", fresh(rng.choice(dirs), ".hl"), rng.choice(files)))
    return entries, dirs


def whiteouts_for(seed, idx, lower_files):
    rng = random.Random(seed * 7777 + idx)
    if idx == 0 or not lower_files:
        return []
    out = []
    for p in rng.sample(lower_files, min(8, len(lower_files))):
        d, b = os.path.split(p)
        out.append(f"{d}/.wh.{b}")
    return out


def build_layer(args):
    seed, idx, nlayers, size, nfiles, blobdir, lower_files, opaque_dir = args
    entries, dirs = plan_layer(seed, idx, nlayers, size, nfiles)
    rng = random.Random(seed * 31 + idx)
    vocab = make_vocab(random.Random(seed))  # same vocabulary in every layer
    table = skew_table(random.Random(seed + 1))
    tmp = os.path.join(blobdir, f".layer{idx}.tmp")

    class HashW(io.RawIOBase):
        def __init__(self, f):
            self.f, self.h, self.n = f, hashlib.sha256(), 0

        def writable(self):
            return True

        def write(self, b):
            self.h.update(b)
            self.n += len(b)
            return self.f.write(b) if self.f else len(b)

    with open(tmp, "wb") as raw:
        comp = HashW(raw)
        gz = gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=comp, mtime=0)
        plain = HashW(gz)
        tf = tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT)

        def info(name, typ, mode, size=0):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.size, ti.mtime = typ, mode, size, MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            return ti

        alldirs = set()
        for d in dirs + [os.path.dirname(e[1]) for e in entries]:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                alldirs.add("/".join(parts[:i]))
        wh = whiteouts_for(seed, idx, lower_files)
        for d in ([opaque_dir] if opaque_dir else []) + [os.path.dirname(w) for w in wh]:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                alldirs.add("/".join(parts[:i]))
        for d in sorted(alldirs):
            tf.addfile(info(d + "/", tarfile.DIRTYPE, 0o755))
        if opaque_dir:
            tf.addfile(info(opaque_dir + "/.wh..wh..opq", tarfile.REGTYPE, 0o644))
        for w in wh:
            tf.addfile(info(w, tarfile.REGTYPE, 0o644))
        nfile = nsym = nhard = 0
        by_kind = {"text": 0, "bin": 0, "rand": 0}
        for kind, path, extra in entries:
            if kind == "file":
                ck, s, mode, fseed = extra
                frng = random.Random(fseed)
                if ck == "text":
                    data = text_bytes(frng, vocab, s)
                elif ck == "bin":
                    data = binary_bytes(frng, table, s)
                else:
                    data = random_bytes(frng, s)
                by_kind[ck] += len(data)
                tf.addfile(info(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
                nfile += 1
            elif kind == "symlink":
                ti = info(path, tarfile.SYMTYPE, 0o777)
                ti.linkname = extra
                tf.addfile(ti)
                nsym += 1
            else:
                ti = info(path, tarfile.LNKTYPE, 0o644)
                ti.linkname = extra
                tf.addfile(ti)
                nhard += 1
        tf.close()
        gz.close()
    digest = comp.h.hexdigest()
    os.replace(tmp, os.path.join(blobdir, digest))
    files = [e[1] for e in entries if e[0] == "file"]
    return {
        "digest": "sha256:" + digest,
        "diff_id": "sha256:" + plain.h.hexdigest(),
        "size": comp.n,
        "uncompressed": plain.n,
        "files": nfile, "symlinks": nsym, "hardlinks": nhard, "dirs": len(alldirs),
        "content_bytes": by_kind,
        "paths": files,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=20240501)
    ap.add_argument("--tag", default="1")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()

    total = a.size_mb * 1024 * 1024
    # Layer shares of bytes and files: a base layer, a runtime, libraries, the app, a config tweak.
    share = [0.30, 0.26, 0.22, 0.14, 0.08]
    fshare = [0.40, 0.22, 0.18, 0.14, 0.06]
    if a.layers != 5:
        share = [1.0 / a.layers] * a.layers
        fshare = share
    blobdir = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)

    # Whiteouts need the lower layers' paths; plan() is cheap and deterministic, so
    # compute them up front and build all layers in parallel.
    plans = [plan_layer(a.seed, i, a.layers, int(total * share[i]), max(10, int(a.files * fshare[i])))
             for i in range(a.layers)]
    jobs = []
    lower = []
    for i in range(a.layers):
        opaque = None
        if i == a.layers - 1 and i > 0:
            opaque = os.path.dirname(plans[0][0][0][1])  # hide one base-layer directory
        jobs.append((a.seed, i, a.layers, int(total * share[i]), max(10, int(a.files * fshare[i])),
                     blobdir, list(lower), opaque))
        lower += [e[1] for e in plans[i][0] if e[0] == "file"]
    with Pool(max(1, min(a.jobs, a.layers))) as pool:
        layers = pool.map(build_layer, jobs)

    def put(obj):
        b = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        d = hashlib.sha256(b).hexdigest()
        with open(os.path.join(blobdir, d), "wb") as f:
            f.write(b)
        return {"digest": "sha256:" + d, "size": len(b)}

    config = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {i}"} for i in range(a.layers)],
    }
    cfg = put(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l["digest"], "size": l["size"]}
                   for l in layers],
    }
    man = put(manifest)
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
            "annotations": {"org.opencontainers.image.ref.name": a.tag}}]}, f)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    shape = {
        "manifest_digest": man["digest"],
        "layers": [{k: v for k, v in l.items() if k != "paths"} for l in layers],
        "compressed_bytes": sum(l["size"] for l in layers),
        "uncompressed_bytes": sum(l["uncompressed"] for l in layers),
        "files": sum(l["files"] for l in layers),
        "symlinks": sum(l["symlinks"] for l in layers),
        "hardlinks": sum(l["hardlinks"] for l in layers),
        "seed": a.seed,
        "python": sys.version.split()[0],
    }
    with open(os.path.join(a.out, "bench-image.json"), "w") as f:
        json.dump(shape, f, indent=1)
    print(json.dumps({k: v for k, v in shape.items() if k != "layers"}))


if __name__ == "__main__":
    main()
