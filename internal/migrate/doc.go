// Package migrate moves running jobs between nodes and checkpoints/restarts
// them with CRIU: a job is checkpointed on the node it runs on, its image
// sent to the destination and restored there (docs/MIGRATION.md).
//
// It owns CRIU (finding it, checking it, running dump and restore) and the
// Migrate RPC service; it must not decide where jobs go (internal/placement)
// nor keep the process table (internal/procs).
package migrate
