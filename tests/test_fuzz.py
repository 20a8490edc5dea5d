"""Fuzzing in CI: the seeds and every crash the fuzzer found replayed as plain tests, and a short atheris run.

`hack/fuzz` runs the same targets for longer by hand. A crash it finds goes to tests/fuzz/crashes/TARGET/ and
is replayed here for good. Crashes in code another part of the project owns are expected failures (strict: the
fix turns them into failures until the marker goes) with the reason, so they are neither lost nor hidden.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, run

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz"

# Crashes the fuzzer found that are not fixed yet: file -> why it fails (empty: every one found is fixed).
KNOWN: dict[str, str] = {}


def _cases(kind: str) -> list[object]:
    files = sorted(p for p in (FUZZ / kind).glob("*/*") if p.is_file())
    cases: list[object] = []
    for path in files:
        key = f"{path.parent.name}/{path.name}"
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[key])] if key in KNOWN else []
        cases.append(pytest.param(path.parent.name, path, id=key, marks=marks))
    return cases


@pytest.mark.parametrize(("target", "path"), _cases("corpus"))
def test_the_seed_corpus_keeps_every_contract(target: str, path: Path) -> None:
    run(target, path.read_bytes())


@pytest.mark.parametrize(("target", "path"), _cases("crashes"))
def test_every_crash_the_fuzzer_found_stays_fixed(target: str, path: Path) -> None:
    run(target, path.read_bytes())


def test_every_target_has_seeds() -> None:
    assert {p.name for p in (FUZZ / "corpus").iterdir()} == set(TARGETS)


HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.fuzz
@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (pip install atheris)")
@pytest.mark.parametrize(
    "target",
    list(TARGETS),
)
def test_a_short_fuzzing_run_finds_nothing(target: str, tmp_path: Path) -> None:
    """A few thousand coverage-guided inputs per target, from the seeds: enough to catch a parser regression."""
    fuzz = [sys.executable, str(ROOT / "hack" / "fuzz"), target, "--runs=10000", "--seconds=0", "--seed=1"]
    done = subprocess.run(
        [*fuzz, f"--work={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, (crashes, done.stderr[-3000:])
