"""The self-contained wrapper (hack/build-wrapper): built in the test run, then run where steps run.

Root filesystems without Python are made from Debian packages (tests/rootfs.py): busybox only, glibc, musl.
Each run gets a read-only root, the wrapper read-only at /step-tracer/bin and a writable /out, as in a pod.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from step_tracer.otlp import json_codec
from step_tracer.span import Span
from tests.otlp_receiver import HttpReceiver
from tests.rootfs import KINDS, Chroot, make_rootfs, missing_for

REPO = Path(__file__).resolve().parents[2]
WRAPPER = "/step-tracer/bin/step-tracer"
NOBODY = 65532  # distroless "nonroot"
BASE_ENV = {"PATH": "/usr/bin:/bin", "STEP_TRACER_FILE": "/out/spans.jsonl"}
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")

pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler to build the launcher")


def load_build_wrapper() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("build_wrapper", str(REPO / "hack" / "build-wrapper"))
    spec = importlib.util.spec_from_loader("build_wrapper", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hack/build-wrapper OUTDIR with the test run's Python, as release tooling calls it."""
    out = tmp_path_factory.mktemp("selfcontained") / "wrapper"
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "build-wrapper"), str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module", params=KINDS)
def chroot(request: pytest.FixtureRequest, built: Path, tmp_path_factory: pytest.TempPathFactory) -> Chroot:
    kind: str = request.param
    missing = missing_for(kind)
    if missing:
        pytest.skip(f"{kind} root filesystem needs: {', '.join(missing)}")
    base = tmp_path_factory.mktemp(kind)
    return Chroot(make_rootfs(kind, base / "root"), built, base / "out")


@pytest.fixture
def out(chroot: Chroot) -> Iterator[Path]:
    """The chroot's /out, emptied after each test."""
    yield chroot.out
    for entry in chroot.out.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def spans(path: Path) -> list[Span]:
    if not path.exists():
        return []
    return [s for line in path.read_text().splitlines() for b in json_codec.decode(line) for s in b.spans]


def only_span(path: Path) -> Span:
    found = spans(path)
    assert len(found) == 1, found
    return found[0]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEP_TRACER_", "TRACE", "BAGGAGE"))}


# --- the tree itself ---------------------------------------------------------------------------------------------


def test_tree_is_copyable_and_readable_by_any_uid(built: Path) -> None:
    for path in [built, *built.rglob("*")]:
        mode = path.lstat().st_mode
        assert not stat.S_ISLNK(mode), path
        assert mode & 0o005 == 0o005 if stat.S_ISDIR(mode) else mode & 0o004, path
    for executable in ("step-tracer", "runtime/python3", "runtime/step-tracer", "runtime/bin/python3"):
        assert (built / executable).stat().st_mode & 0o111 == 0o111


def test_launcher_is_static_and_for_this_machine(built: Path) -> None:
    bw = load_build_wrapper()
    launcher, python = bw.Elf(built / "step-tracer"), bw.Elf(built / "runtime" / "bin" / "python3")
    assert launcher.interpreter == ""
    assert python.interpreter != ""
    assert launcher.machine == python.machine


def test_bytecode_needs_no_sources_and_no_writes(built: Path) -> None:
    """Sourceless or unchecked-hash bytecode: valid after a copy that loses mtimes, never rewritten."""
    site = next(built.glob("runtime/*/python3.*/site-packages"))
    stdlib = site.parent
    assert not [p for p in stdlib.rglob("*.py") if site / "step_tracer" not in p.parents]
    for pyc in [stdlib / "os.pyc", site / "click" / "core.pyc", *site.glob("step_tracer/__pycache__/*.pyc")]:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, pyc  # hash-based, source not checked (PEP 552)


# --- on this machine, outside any Python environment --------------------------------------------------------------


def test_version_from_an_empty_environment(built: Path) -> None:
    proc = subprocess.run([str(built / "step-tracer"), "--version"], env={}, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "step-tracer, version 0.1.0", "")


def test_runs_through_a_symlink_and_from_a_copy(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy, symlinks=True)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "step-tracer").symlink_to(copy / "step-tracer")
    env = {**clean_env(), "STEP_TRACER_FILE": str(tmp_path / "spans.jsonl")}
    proc = subprocess.run([str(tmp_path / "bin" / "step-tracer"), "run", "--", "sh", "-c", "exit 5"], env=env)
    assert proc.returncode == 5
    assert only_span(tmp_path / "spans.jsonl").attributes["process.exit.code"] == 5


def test_broken_installation_says_so(built: Path, tmp_path: Path) -> None:
    shutil.copy2(built / "step-tracer", tmp_path / "step-tracer")
    proc = subprocess.run([str(tmp_path / "step-tracer"), "run", "--", "true"], capture_output=True, text=True)
    assert proc.returncode == 127
    assert proc.stderr == (
        f"step-tracer: cannot start its runtime {tmp_path}/runtime/step-tracer: not found (incomplete installation?)\n"
    )


ENV_PROBES = {
    "loader and python variables": {
        "LD_PRELOAD": "/nonexistent/libgone.so",
        "LD_LIBRARY_PATH": "/nonexistent/lib",
        "PYTHONHOME": "/nonexistent",
        "PYTHONPATH": "/nonexistent",
    },
    "no locale at all": {},
    "C locale": {"LC_CTYPE": "C", "LANG": "C"},
    "odd bytes": {"WEIRD": "a\udcff b=c\nd", "LD_DEBUG_OUTPUT": "/nonexistent/x"},
}


@pytest.mark.parametrize("extra", ENV_PROBES.values(), ids=ENV_PROBES.keys())
def test_child_environment_is_the_steps_own(built: Path, tmp_path: Path, extra: dict[str, str]) -> None:
    """Nothing of the runtime reaches the command: no LD_LIBRARY_PATH/PYTHONHOME, no coerced LC_CTYPE, and the
    step's LD_PRELOAD is applied to the command only (a dynamic `env` complains once, as it does unwrapped)."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("LC_", "LANG", "LD_", "PYTHON"))}
    env.update(extra, STEP_TRACER_FILE=str(tmp_path / "spans.jsonl"))
    bare = subprocess.run(["/usr/bin/env", "-0"], env=env, capture_output=True)
    wrapped = subprocess.run(
        [str(built / "step-tracer"), "run", "--", "/usr/bin/env", "-0"], env=env, capture_output=True
    )
    assert wrapped.returncode == bare.returncode == 0
    assert wrapped.stderr == bare.stderr
    got = dict(item.split(b"=", 1) for item in wrapped.stdout.split(b"\0") if item)
    want = dict(item.split(b"=", 1) for item in bare.stdout.split(b"\0") if item)
    traceparent = got.pop(b"TRACEPARENT")
    assert got == want
    span = only_span(tmp_path / "spans.jsonl")
    assert traceparent == f"00-{span.trace_id}-{span.span_id}-01".encode()


# --- in root filesystems without Python ---------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("uid", [0, NOBODY], ids=["root", "uid65532"])
def test_exit_codes_are_mirrored(chroot: Chroot, out: Path, uid: int) -> None:
    for code in (0, 1, 42, 255):
        proc = chroot.run([WRAPPER, "run", "--", "sh", "-c", f"exit {code}"], BASE_ENV, uid=uid)
        assert (proc.returncode, proc.stderr) == (code, b"")
    results = [
        (s.attributes["process.exit.code"], s.attributes["cicd.pipeline.task.run.result"])
        for s in spans(out / "spans.jsonl")
    ]
    assert results == [(0, "success"), (1, "failure"), (42, "failure"), (255, "failure")]


@pytest.mark.root
def test_command_not_found_is_127(chroot: Chroot, out: Path) -> None:
    proc = chroot.run([WRAPPER, "run", "--", "no-such-command"], BASE_ENV, uid=NOBODY)
    assert proc.returncode == 127
    assert proc.stderr == b"step-tracer: no-such-command: command not found\n"
    assert only_span(out / "spans.jsonl").attributes["error.type"] == "command_not_found"


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_signal_death_ends_the_wrapper_by_that_signal(chroot: Chroot, out: Path, sig: signal.Signals) -> None:
    proc = chroot.run([WRAPPER, "run", "--", "sh", "-c", f"kill -{int(sig)} $$"], BASE_ENV, uid=NOBODY)
    assert proc.returncode == -sig
    span = only_span(out / "spans.jsonl")
    assert span.attributes["process.exit.code"] == 128 + sig
    assert span.attributes["error.type"] == sig.name


@pytest.mark.root
def test_sigterm_to_the_wrapper_reaches_the_command(chroot: Chroot, out: Path) -> None:
    argv = [WRAPPER, "run", "--", "sh", "-c", "echo ready; exec sleep 30"]
    proc = chroot.popen(argv, BASE_ENV, uid=NOBODY, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    span = only_span(out / "spans.jsonl")
    assert span.attributes["cicd.pipeline.task.run.result"] == "cancellation"
    assert [e.attributes["signal"] for e in span.events if e.name == "signal.forwarded"] == ["SIGTERM"]


@pytest.mark.root
def test_stdin_and_stdout_pass_through(chroot: Chroot, out: Path) -> None:
    payload = bytes(range(256)) * 4096
    proc = chroot.run([WRAPPER, "run", "--", "cat"], BASE_ENV, uid=NOBODY, input=payload)
    assert (proc.returncode, proc.stdout == payload, proc.stderr) == (0, True, b"")


@pytest.mark.root
def test_otlp_http_export_from_the_image(chroot: Chroot, http_receiver: HttpReceiver) -> None:
    env = {"PATH": "/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint, "OTEL_SERVICE_NAME": "in-image"}
    proc = chroot.run([WRAPPER, "run", "--", "sh", "-c", "exit 3"], env, uid=NOBODY)
    assert (proc.returncode, proc.stderr) == (3, b"")
    [span] = http_receiver.wait_for_spans(1)
    assert span.attributes["process.exit.code"] == 3
    assert span.resource["service.name"] == "in-image"


@pytest.mark.root
def test_tekton_step_spools_start_and_end(chroot: Chroot, out: Path) -> None:
    (out / "spool").mkdir(mode=0o777)
    (out / "spool").chmod(0o777)
    env = {"PATH": "/bin", "STEP_TRACER_SPOOL": "/out/spool"}
    argv = [WRAPPER, "run", "--tekton-step", "build", "--tekton-step-index", "1", "--", "sh", "-c", "exit 4"]
    proc = chroot.run(argv, env, uid=NOBODY)
    assert (proc.returncode, proc.stderr) == (4, b"")
    records = sorted(p.suffix for p in (out / "spool").iterdir())
    assert records == [".end", ".start"]
    [end] = spans(next((out / "spool").glob("*.end")))
    assert end.attributes["tekton.step.name"] == "build"
    assert end.attributes["process.exit.code"] == 4


@pytest.mark.root
def test_patched_script_step_runs_through_the_shebang(chroot: Chroot, out: Path) -> None:
    """The kernel runs the static launcher as a script's interpreter: how the patcher wraps `script:` steps."""
    (out / "spool").mkdir(mode=0o777)
    (out / "spool").chmod(0o777)
    script = out / "script-0-abcde"
    script.write_text(
        f'#!{WRAPPER} run-script --tekton-step=lint --tekton-step-index=0\n#!/bin/sh\nset -e\necho "args: $*"\nexit 6\n'
    )
    script.chmod(0o755)
    proc = chroot.run(
        ["/out/script-0-abcde", "a", "b c"], {"PATH": "/bin", "STEP_TRACER_SPOOL": "/out/spool"}, uid=NOBODY
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (6, b"args: a b c\n", b"")
    [end] = spans(next((out / "spool").glob("*.end")))
    assert end.attributes["tekton.step.name"] == "lint"
    assert end.attributes["process.exit.code"] == 6


@pytest.mark.root
def test_environment_in_the_image_is_the_steps_own(chroot: Chroot, out: Path) -> None:
    env = {**BASE_ENV, **ENV_PROBES["loader and python variables"], "LANG": "C"}
    env_binary = "/usr/bin/env" if (chroot.root / "usr/bin/env").exists() else "/bin/env"
    bare = chroot.run([env_binary], env, uid=NOBODY)
    wrapped = chroot.run([WRAPPER, "run", "--", env_binary], env, uid=NOBODY)
    assert wrapped.stderr == bare.stderr
    got = sorted(line for line in wrapped.stdout.splitlines() if not line.startswith(b"TRACEPARENT="))
    assert got == sorted(bare.stdout.splitlines())


@pytest.mark.root
def test_runtime_python3_is_a_working_sys_executable(chroot: Chroot, out: Path) -> None:
    """runtime/python3 runs the bundled interpreter with its own site-packages: what code that starts
    `sys.executable -m ...` (the sidecar's API lookup) gets, in the wrapper and the sidecar alike."""
    python = "/step-tracer/bin/runtime/python3"
    code = "import sys, psutil, step_tracer; print(sys.executable, sys.prefix)"
    proc = chroot.run([python, "-c", code], {"PATH": "/bin"}, uid=NOBODY)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{python} /step-tracer/bin/runtime\n".encode(), b"")
    version = chroot.run([python, "-m", "step_tracer", "--version"], {}, uid=NOBODY)
    assert (version.returncode, version.stdout) == (0, b"step-tracer, version 0.1.0\n")
    argv = [WRAPPER, "run", "--", "sh", "-c", 'tr "\\0" "\\n" < /proc/$PPID/cmdline']
    wrapper = chroot.run(argv, BASE_ENV, uid=NOBODY)
    assert wrapper.stdout.splitlines()[3:5] == [b"--argv0", python.encode()]  # the wrapper's sys.executable


@pytest.mark.root
def test_root_filesystem_really_is_read_only(chroot: Chroot, out: Path) -> None:
    proc = chroot.run(["/bin/sh", "-c", "touch /x || touch /step-tracer/bin/x || echo read-only"], BASE_ENV)
    assert proc.stdout == b"read-only\n"


@pytest.mark.root
def test_works_without_proc(chroot: Chroot, out: Path) -> None:
    """No /proc/self/exe: the launcher finds itself from argv[0] (an absolute path, as the patcher writes it)."""
    proc = chroot.run([WRAPPER, "run", "--", "sh", "-c", "exit 9"], BASE_ENV, uid=NOBODY, proc=False)
    assert (proc.returncode, proc.stderr) == (9, b"")
    assert only_span(out / "spans.jsonl").attributes["process.exit.code"] == 9


# --- the launcher on the other architectures Konflux builds --------------------------------------------------------

# Debian's cross compilers (gcc-aarch64-linux-gnu, gcc-powerpc64le-linux-gnu, gcc-s390x-linux-gnu) and qemu-user
# (qemu-user-static works too); .ci/run installs them, so CI runs these instead of skipping them.
CROSS = {
    "aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
    "ppc64le": ("powerpc64le-linux-gnu-gcc", "qemu-ppc64le"),
    "s390x": ("s390x-linux-gnu-gcc", "qemu-s390x"),
}


@pytest.mark.parametrize("arch", CROSS)
def test_launcher_on_other_architectures(arch: str, tmp_path: Path) -> None:
    """Its start code and system calls per architecture, run under qemu-user; the `runtime` it starts is a
    shell script of this machine that reports what it was given."""
    cc, name = CROSS[arch]
    qemu = shutil.which(name) or shutil.which(f"{name}-static")
    if not shutil.which(cc) or not qemu:
        pytest.skip(f"needs {cc} and {name} (apt-get install gcc-{cc[: -len('-gcc')]} qemu-user)")
    bw = load_build_wrapper()
    launcher = tmp_path / "step-tracer"
    source = str(REPO / "hack" / "launcher.c")
    build = subprocess.run(
        [cc, *bw.LAUNCHER_FLAGS, "-Werror", "-o", str(launcher), source, "-lgcc"], capture_output=True
    )
    assert build.returncode == 0, build.stderr
    (tmp_path / "runtime").mkdir()
    fake = tmp_path / "runtime" / "step-tracer"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\necho "env: $KEEP ${LD_PRELOAD-unset}"\n')
    fake.chmod(0o755)
    env = {"KEEP": "kept", "LD_PRELOAD": "/x.so", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([qemu, str(launcher), "run", "--", "a b", ""], env=env, capture_output=True, text=True)
    runtime = tmp_path / "runtime"
    assert proc.stdout.splitlines() == [
        "--library-path",
        f"{runtime}/lib",
        "--argv0",
        f"{runtime}/python3",
        f"{runtime}/bin/python3",
        *["-I", "-S", "-B", "-X", "frozen_modules=on", "-X", "utf8"],
        f"{runtime}/boot.py",
        "1",
        "LD_PRELOAD=/x.so",
        *["run", "--", "a b", ""],
        "env: kept unset",
    ]
