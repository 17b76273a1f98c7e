// A TCP forwarder that makes the kubernetes Service (10.0.0.1:443) reach the
// loopback-only API server from pods on connhealth's e2e node (no kube-proxy).
module connhealth.io/e2e/node/apiproxy

go 1.24
