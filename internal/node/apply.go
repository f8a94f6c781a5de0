package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/clms"
	"github.com/ssi-cluster/ssi/internal/state"
)

// ErrNoLeader means no leader could be reached in time.
var ErrNoLeader = errors.New("no cluster leader is reachable")

const applyTimeout = 5 * time.Second

// forwardedHeader marks a request a member forwarded to the leader, so it is
// never forwarded twice.
const forwardedHeader = "Ssi-Forwarded"

// applyLocal applies a command through this node's Raft, which must lead.
func (d *Daemon) applyLocal(t state.CommandType, cmd any) (state.Result, uint64, error) {
	data, err := state.Encode(t, cmd)
	if err != nil {
		return state.Result{}, 0, err
	}
	f := d.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		return state.Result{}, 0, err
	}
	res, _ := f.Response().(state.Result)
	return res, f.Index(), nil
}

// apply applies a command on the leader, forwarding it when this node does
// not lead, retrying while an election is in progress. A refused command
// comes back as a *state.Error.
func (d *Daemon) apply(ctx context.Context, t state.CommandType, cmd any) (state.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	data, err := state.Encode(t, cmd)
	if err != nil {
		return state.Result{}, err
	}
	var last error = ErrNoLeader
	for {
		if d.isLeader() {
			res, _, err := d.applyLocal(t, cmd)
			if err == nil {
				return res, res.Error()
			}
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
				return state.Result{}, fmt.Errorf("node %d: apply: %w", d.meta.Num, err)
			}
			last = err
		} else if addr, _ := d.raft.LeaderWithID(); addr != "" {
			req := connect.NewRequest(&ssiv1.ApplyRequest{Command: data})
			resp, err := d.peer(string(addr)).Apply(ctx, req)
			if err == nil {
				var res state.Result
				if err := json.Unmarshal(resp.Msg.Result, &res); err != nil {
					return state.Result{}, fmt.Errorf("decode the leader's answer: %w", err)
				}
				return res, res.Error()
			}
			if connect.CodeOf(err) != connect.CodeUnavailable && connect.CodeOf(err) != connect.CodeFailedPrecondition {
				return state.Result{}, fmt.Errorf("leader at %s: %w", addr, err)
			}
			last = fmt.Errorf("leader at %s: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return state.Result{}, fmt.Errorf("%w from node %d (%v); is a majority of the voters up? check 'cluster -V'", ErrNoLeader, d.meta.Num, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// peer returns an RPC client for a member at ip:port.
func (d *Daemon) peer(addr string) ssiv1connect.PeerClient {
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	c, ok := d.peers[addr]
	if !ok {
		c = ssiv1connect.NewPeerClient(d.peerHTTP, "https://"+addr)
		d.peers[addr] = c
	}
	return c
}

// sendHeartbeat delivers hb to the leader, or to a known member that will
// forward it when this node does not know the leader yet (just joined).
func (d *Daemon) sendHeartbeat(ctx context.Context, hb clms.Heartbeat) error {
	addr, _ := d.raft.LeaderWithID()
	targets := []string{string(addr)}
	if addr == "" {
		targets = d.seeds()
	}
	req := &ssiv1.HeartbeatRequest{Num: hb.Num, BootId: hb.BootID, AppliedIndex: hb.Applied, Load: hb.Load,
		RunQueue: hb.RunQueue, CpuBusy: hb.CPUBusy, Ncpu: uint32(hb.NCPU), MemFree: hb.MemFree}
	var err error
	for _, t := range targets {
		if _, err = d.peer(t).Heartbeat(ctx, connect.NewRequest(req)); err == nil {
			return nil
		}
	}
	if err == nil {
		err = ErrNoLeader
	}
	return err
}

// seeds are the addresses to try when the leader is unknown: Raft's
// configuration if this node has one, else the members named at join.
func (d *Daemon) seeds() []string {
	var out []string
	if f := d.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.ID != serverID(d.meta.Num) {
				out = append(out, string(s.Address))
			}
		}
	}
	if len(out) == 0 {
		out = d.meta.Seeds
	}
	return out
}

func slogErrorLog(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}

// toConnect maps errors to wire codes in one place.
func (d *Daemon) toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	var se *state.Error
	if errors.As(err, &se) {
		code := map[state.Code]connect.Code{
			state.CodeInvalid:  connect.CodeInvalidArgument,
			state.CodeExists:   connect.CodeAlreadyExists,
			state.CodeNotFound: connect.CodeNotFound,
			state.CodeFull:     connect.CodeResourceExhausted,
			state.CodeDenied:   connect.CodePermissionDenied,
			state.CodeConflict: connect.CodeFailedPrecondition,
		}[se.Code]
		if code == 0 {
			code = connect.CodeUnknown
		}
		return connect.NewError(code, se)
	}
	if errors.Is(err, ErrNoLeader) || errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("node %d: %w", d.meta.Num, err))
}
