// Package cluster pins Kubernetes' kube-apiserver and etcd as tools (see the tool directives in go.mod) for
// hack/build-cluster. It has no code of its own: this file only gives `go vet ./...` a package to check.
package cluster
