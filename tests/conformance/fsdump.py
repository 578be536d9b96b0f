#!/usr/bin/env python3
"""fsdump.py IMAGE -> canonical JSON description of an image's filesystem and config.

IMAGE may be
  * a `docker save` archive (has manifest.json at top level),
  * an OCI image-layout archive (oci-layout + index.json; index.json may point
    to a nested image index which points to the image manifest),
  * or a directory containing either of the above, unpacked.

`fsdump.py --docker-inspect INSPECT_JSON` instead reads the output of
`docker image inspect IMAGE` of an image WITHOUT layers (docker 20.10 refuses
to `docker save` those: "empty export - not implemented") and prints the same
JSON with an empty file list and the config taken from the inspect output.

Layers may be uncompressed tar, gzip, bzip2 or xz (detected by magic bytes,
not by media type).  Layers are applied in order with OCI whiteout semantics:
  .wh.NAME       deletes NAME (and everything below it) from lower layers
  .wh..wh..opq   deletes every child of its directory from lower layers
Entries of the same layer are never hidden by that layer's own whiteouts; a
non-directory entry replaces a lower directory together with its subtree.
Directories are listed only if some layer has an entry for them (implicit
parent directories are not invented).

Output (stdout, UTF-8, sorted keys, 2-space indent, trailing newline):
  {"files": [ENTRY...],          sorted by "path"; "/" itself is omitted
   "config": {KEY: VALUE...}}    subset of the image config's "config" object
ENTRY:
  {"path": "/abs/path", "type": "file|dir|symlink|hardlink|char|block|fifo",
   "mode": "0644", "uid": 0, "gid": 0,
   "size": N, "sha256": "hex"      (type == file only)
   "target": "..."}                (symlink: link text verbatim;
                                    hardlink: "/abs/path" of the link target)
"mode" is (st_mode & 07777) as a 4-digit octal string, so setuid/setgid/sticky
bits show up as e.g. "4755". Symlinks report the mode stored in the layer
(normally "0777").
Hardlinks are canonicalised so the output does not depend on the order of
entries inside the layer tars: of a set of paths sharing one inode, the
lexicographically smallest path is the real entry (type/size/sha256/mode/owner
of the inode) and every other path is {"type": "hardlink", "target": that
path} with the same mode/uid/gid.
config keys kept (only when present and non-empty, so absent == empty):
  Env Cmd Entrypoint WorkingDir User Labels ExposedPorts Volumes StopSignal
  Shell Healthcheck OnBuild
Values are copied verbatim (Env/Cmd order kept; ExposedPorts/Volumes are
objects of {}), except Healthcheck, whose zero/empty members (Interval: 0,
...) are dropped. Durations are integers in nanoseconds.

`--mask-sha256-of FILE` (may be given several times, before IMAGE or
--docker-inspect): every regular file of the dump whose content has the same
sha256 as FILE is reported as {"sha256": "masked:<basename of FILE>",
"size": -1}. The RUN cases copy the host's /bin/busybox into their images, and
its bytes depend on the busybox-static package version; masking keeps the
expected data independent of it. Hardlinks to such a file are unaffected
(they carry no size/sha256 anyway).

Python standard library only.
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import sys
import tarfile

CONFIG_KEYS = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels",
               "ExposedPorts", "Volumes", "StopSignal", "Shell", "Healthcheck",
               "OnBuild"]

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"


class Source:
    """Uniform read access to a tar archive or a directory."""

    def __init__(self, path):
        self.path = path
        self.isdir = os.path.isdir(path)
        if not self.isdir:
            self.tar = tarfile.open(path, "r:*")
            self.members = {}
            for m in self.tar.getmembers():
                self.members[norm(m.name)] = m

    def has(self, name):
        name = norm(name)
        if self.isdir:
            return os.path.isfile(os.path.join(self.path, name))
        m = self.members.get(name)
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def read(self, name):
        name = norm(name)
        if self.isdir:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        m = self.members.get(name)
        if m is None:
            raise SystemExit("fsdump: %s not found in %s" % (name, self.path))
        # follow links inside the outer archive (docker save uses symlinks
        # for duplicated layers in some versions)
        seen = 0
        while m.issym() or m.islnk():
            seen += 1
            if seen > 20:
                raise SystemExit("fsdump: link loop at %s" % name)
            if m.issym():
                tgt = norm(os.path.join(os.path.dirname(m.name), m.linkname))
            else:
                tgt = norm(m.linkname)
            m = self.members[tgt]
        return self.tar.extractfile(m).read()

    def json(self, name):
        return json.loads(self.read(name).decode("utf-8"))


def norm(p):
    """Normalise a tar path: strip './' components, leading and trailing '/'."""
    parts = []
    for comp in p.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return "/".join(parts)


def blob_path(digest):
    algo, hexd = digest.split(":", 1)
    return "blobs/%s/%s" % (algo, hexd)


def decompress(data):
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        raise SystemExit("fsdump: zstd-compressed layers are not supported")
    return data


def load_image(src):
    """Return (config_json, [layer_bytes...]) for the image in src."""
    if src.has("manifest.json"):
        manifest = src.json("manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise SystemExit("fsdump: empty manifest.json")
        if len(manifest) != 1:
            sys.stderr.write("fsdump: warning: %d images in archive, using the first\n"
                             % len(manifest))
        ent = manifest[0]
        config = src.json(ent["Config"])
        layers = [src.read(l) for l in (ent.get("Layers") or [])]
        return config, layers
    if src.has("index.json"):
        index = src.json("index.json")
        desc = pick_manifest(index)
        while True:
            mt = desc.get("mediaType", "")
            doc = src.json(blob_path(desc["digest"]))
            if mt.endswith("image.index.v1+json") or mt.endswith("manifest.list.v2+json") \
                    or ("manifests" in doc and "layers" not in doc):
                desc = pick_manifest(doc)
                continue
            break
        config = src.json(blob_path(doc["config"]["digest"]))
        layers = [src.read(blob_path(l["digest"])) for l in (doc.get("layers") or [])]
        return config, layers
    raise SystemExit("fsdump: %s is neither a docker-save nor an OCI layout archive"
                     % src.path)


def pick_manifest(index):
    mans = index.get("manifests") or []
    if not mans:
        raise SystemExit("fsdump: index without manifests")
    if len(mans) == 1:
        return mans[0]
    # prefer linux/amd64-ish image manifests, skip attestation manifests
    for m in mans:
        ann = m.get("annotations") or {}
        if ann.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        plat = m.get("platform") or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", "amd64") == "amd64":
            return m
    return mans[0]


def entry_type(m):
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "char"
    if m.isblk():
        return "block"
    if m.isfifo():
        return "fifo"
    raise SystemExit("fsdump: unsupported tar entry type %r for %s" % (m.type, m.name))


def remove_tree(fs, path, keep_self):
    prefix = path + "/"
    for k in [k for k in fs if k.startswith(prefix)]:
        del fs[k]
    if not keep_self:
        fs.pop(path, None)


def apply_layer(fs, data):
    tf = tarfile.open(fileobj=io.BytesIO(decompress(data)), mode="r:")
    members = tf.getmembers()
    # pass 1: whiteouts act on the lower layers only
    for m in members:
        path = norm(m.name)
        base = path.rsplit("/", 1)[-1]
        if not base.startswith(WH_PREFIX):
            continue
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if base == WH_OPAQUE:
            if parent:
                remove_tree(fs, parent, keep_self=True)
            else:
                fs.clear()
        else:
            victim = base[len(WH_PREFIX):]
            remove_tree(fs, (parent + "/" + victim) if parent else victim, keep_self=False)
    # pass 2: add / replace entries
    for m in members:
        path = norm(m.name)
        if not path:
            continue  # the root directory itself
        base = path.rsplit("/", 1)[-1]
        if base.startswith(WH_PREFIX):
            continue
        t = entry_type(m)
        old = fs.get(path)
        if old is not None and not (old["type"] == "dir" and t == "dir"):
            # a non-directory replaces a whole subtree (or a dir replaces a file)
            remove_tree(fs, path, keep_self=False)
        e = {"path": "/" + path, "type": t, "mode": "%04o" % (m.mode & 0o7777),
             "uid": m.uid, "gid": m.gid}
        if t == "file":
            content = tf.extractfile(m).read()
            e["size"] = len(content)
            e["sha256"] = hashlib.sha256(content).hexdigest()
        elif t == "symlink":
            e["target"] = m.linkname
        elif t == "hardlink":
            e["target"] = "/" + norm(m.linkname)
        fs[path] = e


def canonicalise_hardlinks(fs):
    """Make hardlink sets independent of the order of entries in the layers.

    Paths joined by hardlinks (after all layers are applied) form one set; the
    smallest path of a set is reported as the real entry (type, content, mode,
    owner of the linked inode) and every other path as a "hardlink" whose
    target is that smallest path. A hardlink whose target does not exist is
    left as it is.
    """
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for p, e in fs.items():
        if e["type"] == "hardlink":
            t = norm(e["target"])
            if t in fs:
                a, b = find(p), find(t)
                if a != b:
                    parent[a] = b
    groups = {}
    for p in list(parent):
        groups.setdefault(find(p), set()).add(p)
    for root, members in groups.items():
        members.add(root)
        bases = [m for m in members if fs[m]["type"] != "hardlink"]
        if not bases:
            continue  # a cycle of links without a real entry: leave alone
        base = fs[sorted(bases)[0]]
        canon = sorted(members)[0]
        real = dict(base)
        real["path"] = "/" + canon
        for m in members:
            if m == canon:
                fs[m] = real
            else:
                fs[m] = {"path": "/" + m, "type": "hardlink", "mode": real["mode"],
                         "uid": real["uid"], "gid": real["gid"], "target": "/" + canon}


def pick_config(cfg):
    c = cfg.get("config") or {}
    out = {}
    for k in CONFIG_KEYS:
        v = c.get(k)
        if v is None:
            continue
        if k == "Healthcheck" and isinstance(v, dict):
            # zero durations/retries mean "not set"; drop them like absent ones
            v = {hk: hv for hk, hv in v.items() if hv not in (None, 0, "", [], {})}
        if isinstance(v, (list, dict, str)) and len(v) == 0:
            continue
        out[k] = v
    return out


def from_docker_inspect(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, list):
        if len(data) != 1:
            raise SystemExit("fsdump: expected exactly one image in %s" % path)
        data = data[0]
    layers = ((data.get("RootFS") or {}).get("Layers")) or []
    if layers:
        raise SystemExit("fsdump: --docker-inspect is only for images without layers "
                         "(this one has %d); use docker save" % len(layers))
    return {"config": data.get("Config") or {}}, []


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def usage():
    sys.stderr.write("usage: fsdump.py [--mask-sha256-of FILE]... IMAGE_ARCHIVE_OR_DIR\n"
                     "       fsdump.py [--mask-sha256-of FILE]... --docker-inspect INSPECT_JSON\n")
    return 2


def main(argv):
    args = argv[1:]
    masks = {}  # sha256 hex -> replacement
    while len(args) >= 2 and args[0] == "--mask-sha256-of":
        masks[file_sha256(args[1])] = "masked:" + os.path.basename(args[1])
        args = args[2:]
    if len(args) == 2 and args[0] == "--docker-inspect":
        config, layers = from_docker_inspect(args[1])
    elif len(args) == 1 and not args[0].startswith("--"):
        config, layers = load_image(Source(args[0]))
    else:
        return usage()
    fs = {}
    for data in layers:
        apply_layer(fs, data)
    canonicalise_hardlinks(fs)
    for e in fs.values():
        if e["type"] == "file" and e["sha256"] in masks:
            e["sha256"] = masks[e["sha256"]]
            e["size"] = -1
    files = [fs[k] for k in sorted(fs, key=lambda k: "/" + k)]
    out = {"files": files, "config": pick_config(config)}
    sys.stdout.write(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
