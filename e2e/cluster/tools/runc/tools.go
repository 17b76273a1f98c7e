//go:build tools

// Package tools records the main package e2e/node/build compiles (runc's
// module root is package main), so that `go mod tidy` keeps its dependencies.
package tools

import (
	_ "github.com/opencontainers/runc"
)
