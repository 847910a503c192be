#!/usr/bin/env python3
"""Images sharing one base layer, for the confidential-data-hub benchmark.

    gen_shared.py SRC_LAYOUT SRC_JSON OUT_LAYOUT [--count 4] [--seed 20240501]

Takes the base layer (the first, largest layer) of the image gen_image.py wrote
to SRC_LAYOUT (described by SRC_JSON, its bench-image.json) and builds COUNT
images in OUT_LAYOUT, tagged s1..sCOUNT: that same base blob (hard-linked, so
the same digest) plus one small gzip layer of their own (a text file naming
the image and 64 KiB of seeded random bytes). Deterministic for a given seed.
Writes OUT_LAYOUT/shared.json: the base digest and sizes, and each image's
manifest digest. Never touches SRC_LAYOUT.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile

MTIME = 1700000000


def small_layer(seed, i):
    rng = random.Random(seed * 97 + i)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name, data, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            tf.addfile(ti, io.BytesIO(data))

        d = tarfile.TarInfo("app/")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tf.addfile(d)
        add(f"app/image-{i}.txt", f"shared-base image {i}\n".encode())
        add(f"app/data-{i}.bin", rng.randbytes(64 * 1024))
    tar = raw.getvalue()
    comp = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=comp, mtime=0) as gz:
        gz.write(tar)
    return comp.getvalue(), "sha256:" + hashlib.sha256(tar).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("src_json")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--seed", type=int, default=20240501)
    a = ap.parse_args()

    with open(a.src_json) as f:
        shape = json.load(f)
    base = shape["layers"][0]
    blobdir = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)
    src_blob = os.path.join(a.src, "blobs", "sha256", base["digest"].split(":", 1)[1])
    dst_blob = os.path.join(blobdir, base["digest"].split(":", 1)[1])
    if not os.path.exists(dst_blob):
        try:
            os.link(src_blob, dst_blob)
        except OSError:
            shutil.copyfile(src_blob, dst_blob)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobdir, d), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + d, "size": len(data)}

    manifests = []
    images = []
    for i in range(1, a.count + 1):
        blob, diff_id = small_layer(a.seed, i)
        top = put(blob)
        config = {
            "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [base["diff_id"], diff_id]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "shared base"},
                        {"created": "2023-11-14T22:13:20Z", "created_by": f"image {i}"}],
        }
        cfg = put(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": base["digest"],
                 "size": base["size"]},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **top},
            ],
        }
        man = put(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
                          "annotations": {"org.opencontainers.image.ref.name": f"s{i}"}})
        images.append({"tag": f"s{i}", "manifest_digest": man["digest"], "top_size": top["size"]})
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    out = {"base_digest": base["digest"], "base_size": base["size"], "base_uncompressed": base["uncompressed"],
           "base_files": base["files"], "images": images, "python": sys.version.split()[0]}
    with open(os.path.join(a.out, "shared.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
