"""`step-tracer bundle ...`: the click commands for Tekton bundles."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from step_tracer.inject import InjectOptions
from step_tracer.inject.clioptions import injection_options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bundle() -> None:
    """Instrument Tekton bundles (OCI images holding Tasks, Pipelines and StepActions)."""


@bundle.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option(
    "--dry-run", "--diff", "dry_run", is_flag=True, help="Print the diff of every patched object; push nothing."
)
@injection_options()
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when it is a terminal].")
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Also write the pushed bundle as Tekton results: DIR/IMAGE_URL, DIR/IMAGE_DIGEST, DIR/BUNDLE (url@digest).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also print info notes (what was left alone and why).")
def patch(
    src: str,
    dst: str | None,
    dry_run: bool,
    options: InjectOptions,
    insecure: bool,
    progress: bool | None,
    results_dir: str | None,
    verbose: bool,
) -> None:
    """Pull bundle SRC, instrument every object in it, push the result to tag DST (not needed with --dry-run).
    A bundle patched before its Tasks changed is brought up to date.

    The new bundle is written as `tkn bundle push` writes it; the pushed reference (DST's repository @ its
    digest) is printed. References pinned to the old digest must be updated. Registry credentials come
    from the docker config (~/.docker/config.json or $DOCKER_CONFIG), $REGISTRY_AUTH_FILE or
    ${XDG_RUNTIME_DIR}/containers/auth.json. SOURCE_DATE_EPOCH sets the image's created time.

    \b
    Examples:
      step-tracer bundle patch quay.io/org/tasks:1.0 quay.io/org/tasks:1.0-traced
      step-tracer bundle patch --dry-run quay.io/org/tasks:1.0
    """
    from step_tracer.bundle import reference
    from step_tracer.bundle.patch import patch_bundle
    from step_tracer.bundle.progress import Progress
    from step_tracer.bundle.reference import InvalidReference
    from step_tracer.bundle.registry import RegistryError
    from step_tracer.bundle.tkn import BundleError
    from step_tracer.inject import InjectError

    err = sys.stderr
    if dst is None and not dry_run:
        raise click.UsageError("give DST, the tag to push the patched bundle to (or --dry-run to push nothing)")
    show = err.isatty() if progress is None else progress
    bar = Progress(err if show else None)
    try:
        # A dry run without DST names the result after SRC's repository; nothing is pushed there.
        target = dst if dst is not None else f"{reference.parse(src).name}:dry-run"
        report = patch_bundle(src, target, options, dry_run=dry_run, insecure=insecure, progress=bar)
    except InjectError as exc:
        bar.close()
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        sys.exit(2)
    except (InvalidReference, RegistryError, BundleError) as exc:
        bar.close()
        err.write(f"error: {exc}\n")
        sys.exit(2)
    for note in report.notes:
        if note.level == "warning" or verbose:
            err.write(f"{note}\n")
    if dry_run:
        sys.stdout.write(report.diff)
        where = dst or "the patched bundle"
        if report.changed:
            err.write(f"dry run: nothing pushed; {where} would be {report.reference}\n")
        else:
            err.write(f"dry run: nothing to patch; {where} would be a copy of {report.source}\n")
        return
    if not report.changed:
        err.write(f"nothing to patch: {dst} is a copy of {report.source}\n")
    sys.stdout.write(f"{report.reference}\n")
    if results_dir:
        try:
            _write_results(results_dir, report.reference)
        except OSError as exc:
            err.write(f"error: --results-dir {results_dir}: cannot write: {exc.strerror or type(exc).__name__}\n")
            sys.exit(2)


def _write_results(directory: str, reference: str) -> None:
    """The results a Tekton Task publishes for an image it pushed (names as Konflux's build tasks use them)."""
    url, _, digest = reference.rpartition("@")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, value in (("IMAGE_URL", url), ("IMAGE_DIGEST", digest), ("BUNDLE", reference)):
        (path / name).write_text(value)
