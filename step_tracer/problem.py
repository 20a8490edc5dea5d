"""One line for an exception: what users and logs get instead of a traceback or Python's own exception text."""

from __future__ import annotations


def describe(err: BaseException) -> str:
    """An OSError in the system's words with its file; anything else is our bug: its type and where it happened
    (module path inside step_tracer and line), enough to report it."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ""
    if tb is not None:
        where = f" at {tb.tb_frame.f_code.co_filename.rpartition('/step_tracer/')[2]}:{tb.tb_lineno}"
    return f"internal error ({type(err).__name__}{where}); please report it"


def reason(err: BaseException) -> str:
    """Why an I/O step failed, in the system's words without Python's wrapping (`[Errno 111] ...`, a class name):
    for the middle of a one-line message that already names the file, host or option."""
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, OSError) and err.args and isinstance(err.args[-1], OSError):
        return reason(err.args[-1])  # ssl and http.client wrap the socket's error
    text = " ".join(str(err).split())
    words = "".join(f" {c.lower()}" if c.isupper() else c for c in type(err).__name__).strip()
    return text or words
