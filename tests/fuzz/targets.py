"""Fuzz targets: the parsers that read what a step or a client controls, each with the contract it must keep.

A target takes the fuzzer's bytes and raises only when the code under test breaks its contract (an exception
it must not let out, an answer it must not give): every such input is a bug. Used by `hack/fuzz` (atheris,
coverage-guided) and by tests/test_fuzz.py (a short run in CI, and every crash found kept as a regression test).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

Target = Callable[[bytes], None]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def otlp_json(data: bytes) -> None:
    """The OTLP JSON decoder: malformed input is a ValueError, nothing else."""
    from step_tracer.otlp import json_codec

    with contextlib.suppress(ValueError):
        json_codec.decode(_text(data))


def spool_record(data: bytes) -> None:
    """A spool record as the sidecar reads, admits and converts one: only OSError/ValueError (Rejected is one),
    which it quarantines."""
    from step_tracer.sidecar.admit import Admission, Limits
    from step_tracer.sidecar.convert import Converter, StepInfo
    from step_tracer.tekton import spool

    steps = [StepInfo("build", "alpine", "continue")]
    with contextlib.suppress(OSError, ValueError):
        _claimed, span = spool.parse_record(_text(data))
        resource, admitted = Admission(steps, "", {}, {"service.name": "step-tracer"}, Limits()).admit("k", span)
        Converter("node-1", steps).readable(resource, admitted)


def admission_review(data: bytes) -> None:
    """The webhook's review of a request body: never raises, always an allowed AdmissionReview as JSON."""
    from step_tracer.webhook.mutate import WebhookOptions
    from step_tracer.webhook.server import Metrics, review

    answer = review(data, WebhookOptions(), Metrics())
    json.dumps(answer)
    assert answer["kind"] == "AdmissionReview" and answer["response"]["allowed"] is True, answer


def yaml_patcher(data: bytes) -> None:
    """`inject` on a document: only InjectError (ParseError included); a patched text patches to itself."""
    from step_tracer.inject import InjectError, InjectOptions, patch_text

    options = InjectOptions()
    try:
        result = patch_text(_text(data), options, source="fuzz.yaml")
    except InjectError:
        return
    again = patch_text(result.text, options, source="fuzz.yaml")
    assert again.text == result.text, "patching is not idempotent"


TARGETS: dict[str, Target] = {
    "otlp_json": otlp_json,
    "spool_record": spool_record,
    "admission_review": admission_review,
    "yaml_patcher": yaml_patcher,
}


def run(name: str, data: bytes) -> Any:
    return TARGETS[name](data)
