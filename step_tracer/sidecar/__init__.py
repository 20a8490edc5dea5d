"""The step-tracer sidecar of a Tekton pod: installs the wrapper, resolves the TaskRun's trace context and ships
the spool's spans with the OpenTelemetry SDK.

Kept empty: the readiness probe (`ready`) imports this package every second.
"""
