"""step-tracer: one OpenTelemetry span per CI/CD step."""

__version__ = "0.1.0"
