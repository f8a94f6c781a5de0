// Package cfs is the cluster filesystem: one directory tree, exported by the
// node that holds the cluster root, mounted with FUSE on every node.
//
// It owns the server side (Server: the export, path safety, open files,
// locks, and the coherence protocol that tells caching nodes what another
// node changed), the client side (Client: the go-fuse filesystem, its
// session to the server, CDSL resolution, kernel cache invalidation) and
// the Cfs RPC service. The wire protocol is one bidirectional stream per
// client node (Cfs.Session); requests are answered out of order and the
// server pushes invalidations on the same stream (docs/CFS.md).
//
// It must not hold cluster state of its own (which node serves comes from
// its configuration), and nothing it serves may reach outside the export:
// every path is resolved beneath the export root without following
// symlinks, and ssi's own state, /proc, /sys, /dev and /run are never
// exported.
package cfs
