#!/usr/bin/env python3
"""Writes a tiny container image as a `docker save` archive, with no Docker and no registry:
one layer holding Debian's static busybox (`/bin/busybox`, with `sh` linked to it) and any
files given, and a config with the entrypoint and command given.

    make_image.py OUT.tar --cmd '["/bin/busybox", "cat"]' [--entrypoint JSON]
                  [--file PATH_IN_IMAGE=TEXT ...] [--env K=V ...] [--workdir DIR]
"""

import argparse
import hashlib
import io
import json
import tarfile

BUSYBOX = "/bin/busybox"


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def layer(files):
    """The layer's tar: busybox, `bin/sh`, and `files` (path → text)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ["bin"] + sorted({p.rsplit("/", 1)[0] for p in files if "/" in p}):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        with open(BUSYBOX, "rb") as f:
            add_bytes(tar, "bin/busybox", f.read(), 0o755)
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
        for path, text in files.items():
            add_bytes(tar, path, text.encode())
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cmd", required=True, help="the config's Cmd, as JSON")
    parser.add_argument("--entrypoint", help="the config's Entrypoint, as JSON")
    parser.add_argument("--file", action="append", default=[], help="PATH=TEXT in the image")
    parser.add_argument("--env", action="append", default=["PATH=/bin"], help="K=V")
    parser.add_argument("--workdir", default="/")
    args = parser.parse_args()
    files = dict(f.split("=", 1) for f in args.file)
    layer_tar = layer(files)
    layer_hex = hashlib.sha256(layer_tar).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": json.loads(args.cmd),
            "Entrypoint": json.loads(args.entrypoint) if args.entrypoint else None,
            "Env": args.env,
            "WorkingDir": args.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["bench:latest"],
                 "Layers": [f"{layer_hex}/layer.tar"]}]
    with tarfile.open(args.out, mode="w") as tar:
        add_bytes(tar, config_name, config_bytes)
        add_bytes(tar, f"{layer_hex}/layer.tar", layer_tar)
        add_bytes(tar, "manifest.json", json.dumps(manifest).encode())


if __name__ == "__main__":
    main()
