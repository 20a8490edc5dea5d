"""The Containerfile, built by hack/build-image with buildah from base images made here (no registry pulls).

The builder is Debian's python3.11 and gcc with the project's dependencies (copied from this test run's
environment, so pip finds them installed and the build goes --no-index); the final base is a busybox root
filesystem. Storage is vfs under a temporary directory, isolation chroot: nothing outside the test's tmp dir
is touched. Then the image is mounted and run as a pod would: `step-tracer` on PATH and the wrapper tree.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from step_tracer import __version__
from step_tracer.otlp import json_codec
from tests.rootfs import BUILDER_PACKAGES, Chroot, make_builder_rootfs, make_rootfs, missing_for, package_installed

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/step-tracer:test"
BUILDER = "localhost/step-tracer-test-builder:latest"
BASE = "localhost/step-tracer-test-base:latest"


def _missing() -> list[str]:
    missing = missing_for("busybox")
    if shutil.which("buildah") is None:
        missing.append("buildah")
    if "dpkg-query" not in missing:
        missing += [p for p in BUILDER_PACKAGES if not package_installed(p)]
    if sys.version_info[:2] != (3, 11):
        missing.append("a Python 3.11 test run (its dependencies are copied into the 3.11 builder)")
    return missing


pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(900),
    pytest.mark.skipif(bool(_missing()), reason=f"needs {', '.join(_missing())}"),
]


class Buildah:
    """buildah with its own vfs storage under `base`."""

    def __init__(self, base: Path) -> None:
        conf = base / "storage.conf"
        conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n')
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(conf),
            "STORAGE_DRIVER": "vfs",
            "BUILDAH_ISOLATION": "chroot",
        }

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(["buildah", *args], env=self.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
        return proc.stdout.strip()

    def commit_rootfs(self, rootfs: Path, name: str) -> None:
        container = self("from", "scratch")
        shutil.copytree(rootfs, self("mount", container), symlinks=True, dirs_exist_ok=True)
        self("config", "--env", "PATH=/usr/local/bin:/usr/bin:/bin", container)
        self("commit", "--rm", container, name)


def _site_files() -> list[tuple[Path, Path]]:
    """The installed files of every runtime dependency of the package, and pip's, from this test run's Python."""
    loader = importlib.machinery.SourceFileLoader("build_wrapper", str(REPO / "hack" / "build-wrapper"))
    spec = importlib.util.spec_from_loader("build_wrapper", loader)
    assert spec is not None
    bw = importlib.util.module_from_spec(spec)
    loader.exec_module(bw)
    dists = bw.distribution_closure([*bw.project_requirements(True), "pip"])
    return [pair for dist in dists for pair in bw.distribution_files(dist)]


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    base = tmp_path_factory.mktemp("buildah")
    tool = Buildah(base)
    yield tool
    subprocess.run(["buildah", "rm", "--all"], env=tool.env, capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def image(buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """hack/build-image TAG with local bases; the image's configuration as `buildah inspect` gives it."""
    work = tmp_path_factory.mktemp("bases")
    buildah.commit_rootfs(make_rootfs("busybox", work / "base"), BASE)
    buildah.commit_rootfs(make_builder_rootfs(work / "builder", _site_files()), BUILDER)
    env = {
        **buildah.env,
        "BUILDER_IMAGE": BUILDER,
        "BASE_IMAGE": BASE,
        "PIP_ARGS": "--no-index",
        "BUILDAH_ARGS": "--pull=never",
    }
    proc = subprocess.run(
        [str(REPO / "hack" / "build-image"), TAG], env=env, capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]
    return config


@pytest.fixture(scope="module")
def mounted(buildah: Buildah, image: dict[str, Any]) -> Iterator[Path]:
    container = buildah("from", "--pull=never", TAG)
    yield Path(buildah("mount", container))
    buildah("rm", container)


@pytest.fixture
def chroot(mounted: Path, tmp_path: Path) -> Chroot:
    """The image's root, read-only, with its wrapper tree where the sidecar would have copied it."""
    return Chroot(mounted, mounted / "opt/step-tracer/wrapper", tmp_path / "out")


def test_image_runs_as_non_root_with_labels(image: dict[str, Any]) -> None:
    assert image["User"] == "65532:65532"
    assert image["Entrypoint"] == ["/usr/local/bin/step-tracer"]
    labels = image["Labels"]
    assert labels["org.opencontainers.image.source"] == "https://github.com/step-tracer/step-tracer"
    assert labels["org.opencontainers.image.version"] == labels["version"] == __version__
    assert len(labels["org.opencontainers.image.revision"]) in (40, len("unknown"))


def test_step_tracer_on_path_is_the_full_runtime(chroot: Chroot) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    version = chroot.run(["/usr/local/bin/step-tracer", "--version"], env, uid=65532)
    assert (version.returncode, version.stdout, version.stderr) == (
        0,
        f"step-tracer, version {__version__}\n".encode(),
        b"",
    )
    sidecar = chroot.run(["/usr/local/bin/step-tracer", "sidecar", "--help"], env, uid=65532)
    assert (sidecar.returncode, sidecar.stderr) == (0, b"")
    assert b"--install-wrapper" in sidecar.stdout


def test_the_images_wrapper_runs_a_step(chroot: Chroot) -> None:
    env = {"PATH": "/bin", "STEP_TRACER_FILE": "/out/spans.jsonl"}
    proc = chroot.run(["/step-tracer/bin/step-tracer", "run", "--", "sh", "-c", "exit 3"], env, uid=65532)
    assert (proc.returncode, proc.stderr) == (3, b"")
    [line] = (chroot.out / "spans.jsonl").read_text().splitlines()
    [span] = [s for batch in json_codec.decode(line) for s in batch.spans]
    assert span.attributes["process.exit.code"] == 3


def test_wrapper_tree_is_the_small_one(mounted: Path) -> None:
    """The tree copied into every pod carries only what `step-tracer run` needs, not the sidecar's SDK."""
    site = next((mounted / "opt/step-tracer/wrapper/runtime").glob("*/python3.*/site-packages"))
    full = next((mounted / "opt/step-tracer/runtime/runtime").glob("*/python3.*/site-packages"))
    assert (site / "step_tracer" / "wrapper").is_dir() and (site / "psutil").is_dir()
    assert not (site / "opentelemetry").exists() and (full / "opentelemetry" / "sdk").is_dir()
    assert os.readlink(mounted / "usr/local/bin/step-tracer") == "/opt/step-tracer/runtime/step-tracer"
