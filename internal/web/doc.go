// Package web owns the cluster's views for people: the Observe service of
// the control socket (the event stream of `ssi events`, where the
// dashboard is, dashboard tokens) and the web dashboard every daemon can
// serve (net/http + embed, live over server-sent events): node grid, process
// table with kill and migrate, timeline, node table with add-node, load
// history. Tokens are signed with the cluster CA's key, so every node
// accepts every node's tokens; a request without a valid token gets
// nothing. It changes the cluster only through the same Control handlers
// the CLI reaches, as the token's identity, and must not keep cluster state
// of its own beyond the load history it samples for its charts.
package web
