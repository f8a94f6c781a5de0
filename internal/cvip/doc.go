// Package cvip is the cluster virtual IP (docs/CVIP.md): a service address
// that is no node's own, in front of backends on many nodes.
//
// It owns, on every node, the director's work for the VIPs the replicated
// state says this node directs: holding the address on the interface of
// the VIP's network (with a short lifetime it renews, so that a daemon that
// dies lets go of it by itself) and announcing it with gratuitous ARP;
// programming the kernel's datapath (an nftables table of its own: DNAT to
// the healthy backends picked by numgen or jhash through a verdict map,
// SNAT to the VIP so replies come back through the director, conntrack for
// the rest of each connection), or, where nftables is unavailable, a
// user-space proxy; checking the backends' health (TCP connect or an HTTP
// path). While this node leads it runs the election duty
// (consensus.OnLeading): every VIP gets an UP director from its list, and
// another when its director is no longer UP. It serves the Cvip service on
// the control socket (ssi cvip add|ls|rm) and CvipPeer to members.
//
// It must not change the node table, and changes its own state only
// through internal/consensus; health is the director's own view and is not
// replicated.
package cvip
