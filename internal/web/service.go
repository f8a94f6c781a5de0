package web

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Service is the Observe service of the control socket.
type Service struct{ w *Web }

// Service returns the Observe service.
func (w *Web) Service() *Service { return &Service{w: w} }

// Events streams the history and, with follow, what comes after it.
func (s *Service) Events(ctx context.Context, req *connect.Request[ssiv1.EventsRequest], st *connect.ServerStream[ssiv1.ClusterEvent]) error {
	if req.Msg.Last > 100000 {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("--last %d is more than the history can hold", req.Msg.Last))
	}
	evs, newest := eventsAfter(s.w.cfg.FSM.Cluster(), req.Msg.AfterIndex, int(req.Msg.Last))
	for _, e := range evs {
		if err := st.Send(e); err != nil {
			return err
		}
	}
	if !req.Msg.Follow {
		return nil
	}
	return follow(ctx, s.w.cfg.FSM, newest, st.Send)
}

// Dashboard says where this daemon serves the dashboard and metrics.
func (s *Service) Dashboard(context.Context, *connect.Request[ssiv1.DashboardRequest]) (*connect.Response[ssiv1.DashboardResponse], error) {
	return connect.NewResponse(&ssiv1.DashboardResponse{WebUrl: s.w.URL(), MetricsUrl: s.w.cfg.MetricsURL(), Node: s.w.cfg.Self}), nil
}

// DashboardToken issues a token for the caller of the control socket: an
// admin token only to one who may change the cluster.
func (s *Service) DashboardToken(ctx context.Context, req *connect.Request[ssiv1.DashboardTokenRequest]) (*connect.Response[ssiv1.DashboardTokenResponse], error) {
	caller, ok := transport.CallerFrom(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: the control socket gives no peer credentials"))
	}
	admin := !req.Msg.ReadOnly
	if admin {
		if err := transport.AuthorizeAdmin(ctx, "get an admin dashboard token (ask for --read-only)"); err != nil {
			return nil, err
		}
	}
	ttl := time.Duration(req.Msg.TtlSeconds) * time.Second
	switch {
	case ttl == 0:
		ttl = DefaultTokenTTL
	case ttl < time.Minute || ttl > MaxTokenTTL:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("a dashboard token lives between 1m and %v, not %v", MaxTokenTTL, ttl))
	}
	now := time.Now()
	c := Claims{UID: caller.UID, GID: caller.GID, Groups: caller.Groups, Admin: admin, Node: s.w.cfg.Self, Expires: now.Add(ttl).Unix()}
	if u, err := user.LookupId(strconv.FormatUint(uint64(caller.UID), 10)); err == nil {
		c.User = u.Username
	}
	tok, err := Issue(s.w.cfg.CA.Key, s.w.cfg.CA.Cert, c, now)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", s.w.cfg.Self, err))
	}
	resp := &ssiv1.DashboardTokenResponse{Token: tok, ExpiresUnixMs: time.Unix(c.Expires, 0).UnixMilli(), Admin: admin}
	if u := s.w.URL(); u != "" {
		resp.LoginUrl = u + "#token=" + tok
	}
	return connect.NewResponse(resp), nil
}
