// The standard CNI plugins connhealth's e2e node uses (bridge, host-local,
// loopback), in their own module. v1.9.0 is the version containerd v2.2.9 pins.
module connhealth.io/e2e/cluster/tools/cni

go 1.24.2

require github.com/containernetworking/plugins v1.9.0

require (
	github.com/alexflint/go-filemutex v1.3.0 // indirect
	github.com/containernetworking/cni v1.3.0 // indirect
	github.com/coreos/go-iptables v0.8.0 // indirect
	github.com/networkplumbing/go-nft v0.4.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/safchain/ethtool v0.6.2 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/sys v0.35.0 // indirect
	sigs.k8s.io/knftables v0.0.18 // indirect
)
