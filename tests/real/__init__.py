"""Tests and rigs on real components: Tekton's own code (hack/tekton), a process kubelet, real OTLP receivers."""
