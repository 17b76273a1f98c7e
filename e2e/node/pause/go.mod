// The pause (sandbox) container for connhealth's e2e node: there is no
// registry, so e2e/node/images builds this into an OCI archive and imports it.
module connhealth.io/e2e/node/pause

go 1.24
