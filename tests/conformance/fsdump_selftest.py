#!/usr/bin/env python3
"""Self-test for fsdump.py with synthetic images (no docker needed).

No Dockerfile without RUN makes BuildKit emit whiteouts, so the whiteout,
opaque-directory and replacement logic of fsdump.py is checked here on
hand-made layers, in docker-save, OCI-archive (index -> index -> manifest,
gzip + uncompressed layers) and OCI-directory form, and --mask-sha256-of.  Run:
    python3 fsdump_selftest.py      (prints "fsdump selftest: OK")
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def layer(entries):
    """entries: (name, kind, extra) with kind in file/dir/sym/link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.uid = ti.gid = 0
            data = None
            if kind == "file":
                data = extra.encode()
                ti.size = len(data)
                ti.mode = 0o644
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = extra if isinstance(extra, int) else 0o755
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = extra
                ti.mode = 0o777
            elif kind == "link":
                ti.type = tarfile.LNKTYPE
                ti.linkname = extra
                ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


LAYERS = [
    layer([("./", "dir", 0o755), ("./etc/", "dir", 0o755), ("./etc/a", "file", "a1"),
           ("./etc/b", "file", "b1"), ("./opq/", "dir", 0o755), ("./opq/old1", "file", "x"),
           ("./opq/sub/", "dir", 0o755), ("./opq/sub/old2", "file", "y"),
           ("./was-dir/", "dir", 0o755), ("./was-dir/child", "file", "c"),
           ("./was-file", "file", "f"), ("./gone/", "dir", 0o700), ("./gone/deep", "file", "d"),
           # hardlink written before its "real" name sorts first
           ("./hl/zzz", "file", "shared"), ("./hl/aaa", "link", "hl/zzz")]),
    layer([("etc/a", "file", "a2"),                     # overwrite
           ("etc/.wh.b", "file", ""),                   # delete file
           (".wh.gone", "file", ""),                    # delete dir tree
           ("opq/", "dir", 0o750), ("opq/.wh..wh..opq", "file", ""),
           ("opq/new", "file", "n"),                    # same-layer entry survives opq
           ("was-dir", "file", "now a file"),           # file replaces dir tree
           ("was-file/", "dir", 0o711), ("was-file/in", "file", "i"),
           ("link", "sym", "/etc/a")]),
]

EXPECTED_PATHS = {
    "/etc": ("dir", "0755"), "/etc/a": ("file", "0644"),
    # no entry for "hl/" in any layer: fsdump does not invent parent dirs
    "/hl/aaa": ("file", "0644"), "/hl/zzz": ("hardlink", "0644"),
    "/link": ("symlink", "0777"), "/opq": ("dir", "0750"), "/opq/new": ("file", "0644"),
    "/was-dir": ("file", "0644"), "/was-file": ("dir", "0711"), "/was-file/in": ("file", "0644"),
}

CONFIG = {"architecture": "amd64", "os": "linux",
          "config": {"Env": ["PATH=/bin"], "Cmd": None, "Labels": {}, "WorkingDir": "/w",
                     "Healthcheck": {"Test": ["CMD", "x"], "Interval": 0, "Retries": 3}},
          "rootfs": {"type": "layers", "diff_ids": []}}


def sha(b):
    return hashlib.sha256(b).hexdigest()


def add_bytes(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    tf.addfile(ti, io.BytesIO(data))


def docker_save(path):
    cfg = json.dumps(CONFIG).encode()
    with tarfile.open(path, "w") as tf:
        add_bytes(tf, "cfg.json", cfg)
        names = []
        for i, l in enumerate(LAYERS):
            names.append("l%d/layer.tar" % i)
            add_bytes(tf, names[-1], l)
        add_bytes(tf, "manifest.json", json.dumps(
            [{"Config": "cfg.json", "RepoTags": ["t:latest"], "Layers": names}]).encode())


def oci_files():
    files = {}

    def blob(data, mt):
        d = sha(data)
        files["blobs/sha256/" + d] = data
        return {"mediaType": mt, "digest": "sha256:" + d, "size": len(data)}

    cfgd = blob(json.dumps(CONFIG).encode(), "application/vnd.oci.image.config.v1+json")
    lds = [blob(gzip.compress(LAYERS[0], mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"),
           blob(LAYERS[1], "application/vnd.oci.image.layer.v1.tar")]
    man = blob(json.dumps({"schemaVersion": 2, "config": cfgd, "layers": lds}).encode(),
               "application/vnd.oci.image.manifest.v1+json")
    man["platform"] = {"os": "linux", "architecture": "amd64"}
    inner = blob(json.dumps({"schemaVersion": 2, "manifests": [man]}).encode(),
                 "application/vnd.oci.image.index.v1+json")
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [inner]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return files


def dump(*args):
    out = subprocess.run([sys.executable, os.path.join(HERE, "fsdump.py")] + list(args),
                         check=True, stdout=subprocess.PIPE).stdout
    return out


def check(out):
    d = json.loads(out)
    got = {f["path"]: f for f in d["files"]}
    want = EXPECTED_PATHS
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for p, (t, m) in want.items():
        assert got[p]["type"] == t, (p, got[p])
        assert got[p]["mode"] == m, (p, got[p])
    assert got["/etc/a"]["sha256"] == sha(b"a2")
    assert got["/was-dir"]["sha256"] == sha(b"now a file")
    assert got["/hl/aaa"]["sha256"] == sha(b"shared") and got["/hl/zzz"]["target"] == "/hl/aaa"
    assert got["/link"]["target"] == "/etc/a"
    assert d["config"] == {"Env": ["PATH=/bin"], "WorkingDir": "/w",
                           "Healthcheck": {"Test": ["CMD", "x"], "Retries": 3}}, d["config"]


def main():
    with tempfile.TemporaryDirectory() as t:
        ds = os.path.join(t, "save.tar")
        docker_save(ds)
        a = dump(ds)
        check(a)
        files = oci_files()
        ot = os.path.join(t, "oci.tar")
        with tarfile.open(ot, "w") as tf:
            for n, data in sorted(files.items()):
                add_bytes(tf, n, data)
        b = dump(ot)
        od = os.path.join(t, "ocidir")
        for n, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(od, n)), exist_ok=True)
            with open(os.path.join(od, n), "wb") as f:
                f.write(data)
        c = dump(od)
        assert a == b == c, "docker-save / OCI archive / OCI dir dumps differ"
        # --mask-sha256-of: files with the same bytes as the given file are masked
        mf = os.path.join(t, "shared-bytes")
        with open(mf, "wb") as f:
            f.write(b"shared")
        m = {f["path"]: f for f in json.loads(dump("--mask-sha256-of", mf, ds))["files"]}
        assert m["/hl/aaa"]["sha256"] == "masked:shared-bytes" and m["/hl/aaa"]["size"] == -1, m
        assert m["/hl/zzz"]["type"] == "hardlink" and "sha256" not in m["/hl/zzz"], m
        assert m["/etc/a"]["sha256"] == sha(b"a2") and m["/etc/a"]["size"] == 2, m
    print("fsdump selftest: OK")


if __name__ == "__main__":
    main()
