//go:build tools

// Package tools records the main package ../../build compiles with
// --release-tools (the registry), so that `go mod tidy` keeps its
// dependencies in go.mod and go.sum.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
