"""Which step this is, read from Tekton's entrypoint (step_tracer/tekton/identity.py). tests/real checks the same
under Tekton's real entrypoint; these pin the parsing on a made-up /proc and /tekton/steps."""

from __future__ import annotations

import os
from pathlib import Path

from step_tracer.tekton import identity


def fake_proc(tmp_path: Path, *args: str, pid: int = 42) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    return proc


def steps_dir(tmp_path: Path, names: list[str]) -> Path:
    """/tekton/steps as the entrypoint's `init` makes it: NAME and INDEX links to /tekton/run/INDEX/status."""
    steps = tmp_path / "steps"
    steps.mkdir()
    for i, name in enumerate(names):
        os.symlink(f"/tekton/run/{i}/status", steps / name)
        os.symlink(f"/tekton/run/{i}/status", steps / str(i))
    return steps


ENTRYPOINT = ["/tekton/bin/entrypoint", "-wait_file", "/tekton/run/1/out", "-post_file", "/tekton/run/2/out"]


def test_the_index_timeout_and_container_come_from_the_entrypoint(tmp_path: Path) -> None:
    args = [*ENTRYPOINT, "-step_metadata_dir", "/tekton/run/2/status", "-timeout", "1m30s", "-entrypoint", "sh"]
    proc = fake_proc(tmp_path, *args, "--", "-c", "-timeout 5s")
    found = identity.read(42, str(proc), str(steps_dir(tmp_path, ["step-a", "step-b", "step-build"])))
    assert found is not None
    assert (found.index, found.container, found.timeout) == (2, "step-build", "1m30s")


def test_go_flag_forms_and_the_separator(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "entrypoint", "--step_metadata_dir=/tekton/run/0/status", "--", "-timeout", "9s")
    found = identity.read(42, str(proc), str(tmp_path / "no-steps"))
    assert found is not None
    # Nothing after `--` is the entrypoint's: that is the step's own command line.
    assert (found.index, found.container, found.timeout) == (0, None, None)


def test_a_parent_that_is_not_tektons_entrypoint_says_nothing(tmp_path: Path) -> None:
    parents = (["bash", "-c", "step-tracer run -- make"], ["entrypoint", "-step_metadata_dir", "/elsewhere/0/status"])
    for args in parents:
        assert identity.read(42, str(fake_proc(tmp_path / args[0], *args)), str(tmp_path)) is None
    assert identity.read(7, str(tmp_path / "no-proc"), str(tmp_path)) is None
    odd = fake_proc(tmp_path / "odd", "entrypoint", "-step_metadata_dir", "/tekton/run/../1/status")
    assert identity.read(42, str(odd), str(tmp_path)) is None


def test_the_step_name_behind_a_container_name() -> None:
    assert identity.step_name("step-build", "say-hello") == "build"  # a StepAction's own name is not the step's
    assert identity.step_name("step-build", "build") == "build"
    assert identity.step_name("step-unnamed-3", "") == ""
    long = "x" * 70
    # Tekton cuts container names to 63 characters: the patcher's full name is kept when it makes that container.
    assert identity.step_name("step-" + "x" * 58, long) == long
