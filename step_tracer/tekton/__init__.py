"""What the wrapper and the sidecar know about the Tekton pod they run in: pod info files, the spool."""
