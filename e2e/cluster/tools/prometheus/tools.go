//go:build tools

// Package tools records the main packages ../../build compiles with
// --prometheus (the Prometheus server and promtool), so that `go mod tidy`
// keeps their dependencies in go.mod and go.sum.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
