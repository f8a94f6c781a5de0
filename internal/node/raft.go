package node

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// RaftTiming tunes Raft's failure detection; zero values take defaults
// suited to a LAN or loopback. Large or slow clusters want larger values.
type RaftTiming struct {
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
}

// Default Raft timings.
const (
	DefaultRaftHeartbeatTimeout = 500 * time.Millisecond
	DefaultRaftElectionTimeout  = 500 * time.Millisecond
)

func raftConfig(num uint32, t RaftTiming) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = serverID(num)
	c.HeartbeatTimeout = t.HeartbeatTimeout
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultRaftHeartbeatTimeout
	}
	c.ElectionTimeout = t.ElectionTimeout
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultRaftElectionTimeout
	}
	c.LeaderLeaseTimeout = c.HeartbeatTimeout / 2
	c.CommitTimeout = 20 * time.Millisecond
	c.SnapshotThreshold = 4096
	c.SnapshotInterval = 60 * time.Second
	c.TrailingLogs = 4096
	c.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	return c
}

type stores struct {
	bolt   *raftboltdb.BoltStore
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
}

func openStores(dir DataDir) (*stores, error) {
	rd := dir.raftDir()
	if err := os.MkdirAll(rd, 0o700); err != nil {
		return nil, fmt.Errorf("create Raft directory: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(rd, "raft.db"), BoltOptions: &bbolt.Options{Timeout: 2 * time.Second}})
	if err != nil {
		return nil, fmt.Errorf("open Raft log %s: %w (is another daemon using this data directory?)", filepath.Join(rd, "raft.db"), err)
	}
	logs, err := raft.NewLogCache(512, bolt)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("Raft log cache: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStore(rd, 2, io.Discard)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("open Raft snapshots: %w", err)
	}
	return &stores{bolt: bolt, logs: logs, stable: bolt, snaps: snaps}, nil
}

func (s *stores) Close() error { return s.bolt.Close() }
