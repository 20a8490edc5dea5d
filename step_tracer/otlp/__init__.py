"""OTLP wire codecs for `step_tracer.span` records: JSON (files, spool, console) and protobuf (OTLP/HTTP, gRPC).

Hand-written rather than the SDK's encoders so the wrapper can record and ship a span without importing the
OpenTelemetry SDK and protobuf runtime (hundreds of milliseconds per step). Tests decode their output with
opentelemetry-proto to keep them honest.
"""
