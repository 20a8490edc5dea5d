"""`step-tracer inject`: instrument Tekton Tasks, Pipelines and StepActions with the step-tracer wrapper.

Public API: `patch_text` for one text, `inject_paths` for files/directories/stdin (the CLI), and the
validation helpers (`validate_bundle` for bundle builders).
"""

from step_tracer.inject.model import (
    DEFAULT_OTLP_SECRET,
    DEFAULT_SIDECAR_IMAGE,
    DEFAULT_WRAPPER,
    InjectError,
    InjectOptions,
    Location,
    Note,
    ParseError,
    PatchResult,
    Problem,
    Resolver,
    StepReport,
)
from step_tracer.inject.runner import inject_paths, patch_text
from step_tracer.inject.validate import MAX_BUNDLE_OBJECTS, validate_bundle, validate_document, validate_resource

__all__ = [
    "DEFAULT_OTLP_SECRET",
    "DEFAULT_SIDECAR_IMAGE",
    "DEFAULT_WRAPPER",
    "MAX_BUNDLE_OBJECTS",
    "InjectError",
    "InjectOptions",
    "Location",
    "Note",
    "ParseError",
    "PatchResult",
    "Problem",
    "Resolver",
    "StepReport",
    "inject_paths",
    "patch_text",
    "validate_bundle",
    "validate_document",
    "validate_resource",
]
