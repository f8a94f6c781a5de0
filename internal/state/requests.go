package state

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Exactly-once changes. A proposer that cannot tell whether its command
// was committed (the leader died or the connection broke after sending)
// sends the same command again; a request ID makes the second copy return
// the first one's outcome instead of being applied twice (where the second
// AddNodes, say, would be refused as a duplicate of the first). The state
// machine remembers the outcomes of the last MaxRequests commands that
// carried an ID, in the replicated state, so every node and every snapshot
// agrees.

// MaxRequests is how many request outcomes the state remembers.
const MaxRequests = 256

// remembered is one request's outcome.
type remembered struct {
	ID     string `json:"id"`
	Result Result `json:"result"`
}

// EncodeRequest encodes a command carrying request ID id (at most 64
// printable bytes), as Encode does otherwise.
func EncodeRequest(t CommandType, cmd any, id string) ([]byte, error) {
	if len(id) == 0 || len(id) > 64 {
		return nil, fmt.Errorf("encode command %v: a request ID must have 1 to 64 bytes", t)
	}
	b, err := Encode(t, cmd)
	if err != nil {
		return nil, err
	}
	e, err := DecodeEntry(b)
	if err != nil {
		return nil, err
	}
	body := bytes.TrimSpace(e.Body)
	if len(body) < 2 || body[0] != '{' {
		return nil, fmt.Errorf("encode command %v: only an object can carry a request ID", t)
	}
	idJSON, _ := json.Marshal(id)
	rest := body[1:]
	sep := []byte(",")
	if len(bytes.TrimSpace(rest)) == 1 { // "{}"
		sep = nil
	}
	withID := append(append(append([]byte(`{"request_id":`), idJSON...), sep...), rest...)
	e.Body = withID
	return e.Bytes(), nil
}

// requestID is the request ID a command body carries, "" if none.
func requestID(body []byte) string {
	if !bytes.Contains(body, []byte(`"request_id"`)) {
		return ""
	}
	var v struct {
		ID string `json:"request_id"`
	}
	if json.Unmarshal(body, &v) != nil {
		return ""
	}
	return v.ID
}

// Outcome is the remembered result of request id, if it is still known.
func (c *Cluster) Outcome(id string) (Result, bool) {
	for i := len(c.Requests) - 1; i >= 0; i-- {
		if c.Requests[i].ID == id {
			return c.Requests[i].Result, true
		}
	}
	return Result{}, false
}

// remember records the outcome of request id, forgetting the oldest past
// MaxRequests.
func (c *Cluster) remember(id string, r Result) {
	c.Requests = append(c.Requests, remembered{ID: id, Result: r})
	if len(c.Requests) > MaxRequests {
		c.Requests = append([]remembered(nil), c.Requests[len(c.Requests)-MaxRequests:]...)
	}
}
