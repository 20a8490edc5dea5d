"""The local images real pods run in: small root filesystems made on this machine, nothing pulled.

- Tekton's own images (`tekton/entrypoint`, `tekton/nop`, `tekton/workingdirinit`): only `/ko-app/<binary>`, the
  static binaries hack/build-tekton built from Tekton's module, laid out as ko lays them out;
- `tekton/shell` and `busybox`: busybox-static alone (the place-scripts init container runs `sh -c`);
- `noshell`: busybox-static under applet names (echo, cat, true, ...) but no `sh`: a distroless-like step image;
- `host` (the default for any other image): this machine's root filesystem, read through an overlay, which has
  sh, bash, coreutils and python3;
- `step-tracer`: the image the Containerfile builds, made the same way without buildah: the `--full`
  self-contained tree at /opt/step-tracer/runtime (the sidecar), the step wrapper tree at
  /opt/step-tracer/wrapper, `/usr/local/bin/step-tracer`, USER 65532.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.real.gobuild import built
from tests.real.podrunner import DEFAULT_PATH, Image
from tests.rootfs import make_rootfs, package_files

REPO = Path(__file__).resolve().parents[2]
TEKTON_BINARIES = ("entrypoint", "nop", "workingdirinit")
NOSHELL_APPLETS = ("echo", "cat", "true", "false", "ls", "printf", "sleep", "env", "id", "touch", "mkdir")
SIDECAR_IMAGE = "quay.io/step-tracer/step-tracer"


def tekton_bin_dir() -> Path:
    return built("tekton")


def tekton_image(binary: str, root: Path) -> Image:
    (root / "ko-app").mkdir(parents=True)
    shutil.copy2(tekton_bin_dir() / binary, root / "ko-app" / binary)
    # distroless/static's nonroot user, as ko's default base image runs Tekton's binaries
    return Image(root, entrypoint=[f"/ko-app/{binary}"], user=65532)


def noshell_image(root: Path) -> Image:
    busybox = next(p for p in package_files("busybox-static") if p.endswith("/busybox"))
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "echo")
    for applet in NOSHELL_APPLETS[1:]:
        os.link(root / "bin" / "echo", root / "bin" / applet)
    return Image(root, env={"PATH": "/bin"})


def step_tracer_image(root: Path) -> Image:
    """The Containerfile's final stage, built with the test run's Python instead of the builder image."""
    build = REPO / "hack" / "build-wrapper"
    opt = root / "opt" / "step-tracer"
    for args in (["--full", str(opt / "runtime")], [str(opt / "wrapper")]):
        subprocess.run([sys.executable, str(build), *args], check=True, capture_output=True)
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "usr" / "local" / "bin" / "step-tracer").symlink_to("/opt/step-tracer/runtime/step-tracer")
    return Image(
        root,
        entrypoint=["/usr/local/bin/step-tracer"],
        cmd=["--help"],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        user=65532,
    )


def make_images(base: Path) -> tuple[dict[str, Image], Image]:
    """Every local image under `base` (made once per test session), and the default image."""
    images: dict[str, Image] = {}
    for binary in TEKTON_BINARIES:
        images[f"tekton/{binary}"] = tekton_image(binary, base / binary)
    busybox = Image(make_rootfs("busybox", base / "busybox"), env={"PATH": "/bin"})
    images["tekton/shell"] = images["busybox"] = busybox
    images["noshell"] = noshell_image(base / "noshell")
    images[SIDECAR_IMAGE] = step_tracer_image(base / "step-tracer")
    host = Image(Path("/"), env={"PATH": DEFAULT_PATH})
    images["host"] = host
    return images, host
