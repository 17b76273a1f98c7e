//go:build tools

// Package tools records the main packages ../build compiles for the newest
// Kubernetes (CONNHEALTH_K8S=newest), so that `go mod tidy` keeps their
// dependencies in go.mod and go.sum. The control plane only: the real node
// (e2e/node) stays on the default version (see ../README.md).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
