"""The kubelet's share of running a Tekton pod (podrunner.py): Downward API files and `$(VAR)` expansion.

Each piece follows the kubelet's code, because the wrapper and the sidecar parse what the kubelet writes:
- `format_map`: k8s.io/kubernetes pkg/fieldpath FormatMap (sorted keys, `key="value"` with Go's %q, newline-joined,
  no trailing newline);
- `write_volume`: pkg/volume/util AtomicWriter (a `..<timestamp>` directory, the `..data` symlink swapped
  atomically, one `name -> ..data/name` symlink per file), so an update (the `tekton.dev/ready` annotation) is atomic;
- `expand`: third_party/forked/golang/expansion (command, args and env values; `$$` escapes, unknown names stay).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

_SIMPLE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(value: str) -> str:
    """strconv.Quote: printable runes kept as UTF-8, C escapes, \\xNN below 0x20 and 0x7f, \\uNNNN, \\UNNNNNNNN.

    Go's IsPrint (letters, marks, numbers, punctuation, symbols, ASCII space) and str.isprintable agree: both
    exclude the C* and Z* categories but U+0020.
    """
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # not a valid rune: Go quotes utf8.RuneError
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_map(values: Mapping[str, str]) -> str:
    """The content of a `metadata.labels` / `metadata.annotations` Downward API file."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


def field_value(field_path: str, meta: Mapping[str, object]) -> str:
    """fieldpath.ExtractFieldPathAsString for the fields a pod's Downward API offers.

    `meta` holds name, namespace, uid, labels, annotations, and for env only nodeName, serviceAccountName, podIP.
    """
    labels = meta.get("labels")
    annotations = meta.get("annotations")
    assert isinstance(labels, Mapping) and isinstance(annotations, Mapping)
    for prefix, mapping in (("metadata.labels", labels), ("metadata.annotations", annotations)):
        if field_path == prefix:
            return format_map(mapping)
        if field_path.startswith(prefix + "['") and field_path.endswith("']"):
            return str(mapping.get(field_path[len(prefix) + 2 : -2], ""))
    simple = {
        "metadata.name": "name",
        "metadata.namespace": "namespace",
        "metadata.uid": "uid",
        "spec.nodeName": "nodeName",
        "spec.serviceAccountName": "serviceAccountName",
        "status.podIP": "podIP",
        "status.hostIP": "hostIP",
    }
    if field_path in simple:
        return str(meta.get(simple[field_path], ""))
    raise ValueError(f"unsupported fieldPath {field_path!r}")


def write_volume(directory: Path, files: Mapping[str, bytes], mode: int = 0o644) -> None:
    """AtomicWriter.Write: a fresh timestamped directory, `..data` swapped by rename, stable per-file symlinks."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    payload = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    payload.chmod(0o755)
    for rel, data in files.items():
        target = payload / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    data_link = directory / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(payload.name, tmp_link)
    os.replace(tmp_link, data_link)
    for rel in files:
        top = rel.split("/", 1)[0]
        link = directory / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    if old is not None and old != payload.name:
        for path in sorted((directory / old).rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        (directory / old).rmdir()


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` becomes `$`, anything else stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)
