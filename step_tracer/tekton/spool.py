"""The spool: one file per step span, written by the wrapper and shipped (then deleted) by the sidecar.

`<trace_id>-<span_id>.start` is written when a step starts (end time 0), `<trace_id>-<span_id>.end` when it
ends; each holds one `json_codec` line. Writers create `.<name>.<pid>.tmp` and rename it into place, so a
reader sees a record whole or not at all; names starting with "." are never records.

Imported by the wrapper on every Tekton step: stdlib C modules only at module level.
"""

from __future__ import annotations

import os

from step_tracer.otlp import json_codec
from step_tracer.span import Batch

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from collections.abc import Mapping

    from step_tracer.span import Attributes, AttributeValue, Span

START = ".start"
END = ".end"
#: Steps and the sidecar may run as different UIDs: the sidecar must read every record (it deletes them through
#: the directory's permissions), but no other step's UID may rewrite one in place.
RECORD_MODE = 0o644
#: The largest record the sidecar reads (README, "Security model"); a step span is a few KiB, `--record-args`
#: of a long command line a few hundred.
MAX_RECORD_BYTES = 1 << 20
_S_IFMT = 0o170000
_S_IFREG = 0o100000
_HEX = frozenset("0123456789abcdef")


def record_names(trace_id: str, span_id: str) -> tuple[str, str]:
    """(start record name, end record name) of one span."""
    key = trace_id + "-" + span_id
    return key + START, key + END


def write_start(spool_dir: str, resource: Mapping[str, AttributeValue], span: Span) -> str:
    """Write the write-ahead record of a step that is starting. Returns its path; raises OSError."""
    return _write(spool_dir, record_names(span.trace_id, span.span_id)[0], resource, span)


def write_end(spool_dir: str, resource: Mapping[str, AttributeValue], span: Span) -> str:
    """Write the finished span. Returns its path; raises OSError."""
    return _write(spool_dir, record_names(span.trace_id, span.span_id)[1], resource, span)


def _write(spool_dir: str, name: str, resource: Mapping[str, AttributeValue], span: Span) -> str:
    # A lone surrogate (undecodable argv bytes) only occurs inside a JSON string: the escape \udcff is valid.
    data = (json_codec.encode([Batch(resource, [span])]) + "\n").encode("utf-8", "backslashreplace")
    path = os.path.join(spool_dir, name)
    tmp = os.path.join(spool_dir, "." + name + "." + str(os.getpid()) + ".tmp")
    fd = open_new(tmp, RECORD_MODE)
    try:
        try:
            os.fchmod(fd, RECORD_MODE)  # the umask narrowed the mode os.open applied
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(f"short write to {tmp}")
                view = view[written:]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def open_new(path: str, mode: int) -> int:
    """A new file at `path` for writing. Whatever is already there is removed, never written through: a step can
    plant a symlink or FIFO at a predictable temporary name (O_EXCL fails on both)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        # Left by a killed process that had our pid (pid namespaces restart at 1 in every container), or planted.
        os.unlink(path)
        return os.open(path, flags, mode)


def record_key(name: str) -> tuple[str, str] | None:
    """(key, suffix) of a record file name, key = "<trace_id>-<span_id>"; None for anything else."""
    if name.endswith(START):
        key, suffix = name[: -len(START)], START
    elif name.endswith(END):
        key, suffix = name[: -len(END)], END
    else:
        return None
    if len(key) != 49 or key[32] != "-" or not _HEX.issuperset(key[:32]) or not _HEX.issuperset(key[33:]):
        return None
    return key, suffix


def list_records(spool_dir: str) -> tuple[set[str], set[str]]:
    """(keys with a start record, keys with an end record), from one pass over the directory.

    Only names are held, never contents, so a large backlog costs about 100 bytes per record.
    """
    starts: set[str] = set()
    ends: set[str] = set()
    with os.scandir(spool_dir) as entries:
        for entry in entries:
            parsed = record_key(entry.name)
            if parsed is None:
                continue
            (starts if parsed[1] == START else ends).add(parsed[0])
    return starts, ends


def record_path(spool_dir: str, key: str, suffix: str) -> str:
    return os.path.join(spool_dir, key + suffix)


def parse_record(text: str) -> tuple[Attributes, Span]:
    """(resource, span) of one record's content. Raises ValueError unless it holds exactly one span."""
    batches = json_codec.decode(text.strip())
    spans = [(b.resource, s) for b in batches for s in b.spans]
    if len(spans) != 1:
        raise ValueError(f"a spool record holds exactly one span, found {len(spans)}")
    return spans[0]


def read_limited(path: str, limit: int, *, follow: bool = False) -> tuple[bytes, int]:
    """(contents, owner uid) of the regular file at `path`, never blocking and never more than `limit` bytes.

    Anything a step can put in a shared directory is untrusted: a FIFO would block a plain open() or read()
    forever, a symlink to /dev/zero would never end, a large file would exhaust memory. So: O_NONBLOCK (a FIFO
    opens at once and is then refused), O_NOFOLLOW unless `follow` (Downward API files are the kubelet's
    symlinks), regular files only (checked on the open descriptor), and at most `limit` + 1 bytes read.
    Raises OSError (FileNotFoundError when absent) or ValueError for a file that is not acceptable.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        status = os.fstat(fd)
        if status.st_mode & _S_IFMT != _S_IFREG:
            raise ValueError("not a regular file")
        if status.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        chunks = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ValueError(f"larger than {limit} bytes")
        return b"".join(chunks), status.st_uid
    finally:
        os.close(fd)


def read_owned_record(path: str, limit: int = MAX_RECORD_BYTES) -> tuple[Attributes, Span, int]:
    """(resource, span, owner uid) of the record at `path`. Raises OSError (FileNotFoundError once shipped) or
    ValueError (not a regular file, too large, not one OTLP JSON span)."""
    data, owner = read_limited(path, limit)
    resource, span = parse_record(data.decode("utf-8", "replace"))
    return resource, span, owner


def read_record(path: str, limit: int = MAX_RECORD_BYTES) -> tuple[Attributes, Span]:
    """(resource, span) of the record at `path`; see `read_owned_record`."""
    resource, span, _owner = read_owned_record(path, limit)
    return resource, span
