//go:build tools

// Package tools records the main packages ../../build compiles with
// --release-tools (cosign and crane), so that `go mod tidy` keeps their
// dependencies in go.mod and go.sum.
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane"
	_ "github.com/sigstore/cosign/v2/cmd/cosign"
)
