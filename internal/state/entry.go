package state

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ssi-cluster/ssi/internal/version"
)

// Log entries (docs/UPGRADES.md).
//
// An entry written by this version ("stamped") is:
//
//	offset  size  field
//	0       1     command type (CommandType; bit 0x80 is IgnoreUnknown)
//	1       1     0x00, the stamp marker
//	2       1     H, the length of the header that follows, at least 6
//	3       2     major  \
//	5       2     minor   > the lowest ssi version that understands the entry,
//	7       2     patch  /  big-endian
//	9       H-6   later header fields (none yet); older versions skip them
//	3+H     ...   the command, JSON
//
// An entry written before stamps existed ("legacy") is the command type
// followed directly by the JSON command. Legacy entries are still in Raft
// logs on disk, so they are still read; their version is the one the table
// below gives their type. JSON never starts with a control character, so
// byte 1 tells the formats apart: 0x00 is a stamp, other control characters
// (except JSON's whitespace: tab, newline, carriage return) are reserved for
// entry formats of later versions, which this version cannot read at all,
// anything else is the JSON of a legacy entry.
//
// Byte 0 is the command type in every format, present and future, so that
// the IgnoreUnknown bit always works. The first 9 bytes of the stamped
// layout never change: a later version
// adds header fields after the patch number (raising H), or uses a reserved
// marker for a new layout. Either way an older node can still read the
// version it must upgrade to, or knows that it must upgrade.

// stampMarker is byte 1 of a stamped entry.
const stampMarker = 0x00

// stampLen is the size of the version stamp, the shortest valid header.
const stampLen = 6

// Entry is a decoded log entry.
type Entry struct {
	Type CommandType
	// Needs is the lowest ssi version that understands the entry; zero
	// for a legacy entry, which does not say.
	Needs version.V
	// Legacy marks an entry without a stamp (type byte then JSON).
	Legacy bool
	// Body is the JSON command.
	Body []byte
}

// Errors of DecodeEntry. ErrFutureEntryFormat means the entry was written
// by a newer ssi; ErrMalformedEntry means no ssi version wrote it.
var (
	ErrMalformedEntry    = errors.New("malformed log entry")
	ErrFutureEntryFormat = errors.New("log entry in a format introduced by a newer ssi version")
)

// DecodeEntry splits a log entry into its type, version stamp and body. The
// body aliases data.
func DecodeEntry(data []byte) (Entry, error) {
	if len(data) == 0 {
		return Entry{}, fmt.Errorf("%w: empty", ErrMalformedEntry)
	}
	e := Entry{Type: CommandType(data[0])}
	if len(data) == 1 || !isControl(data[1]) {
		e.Legacy, e.Body = true, data[1:]
		return e, nil
	}
	if data[1] != stampMarker {
		return e, fmt.Errorf("%w (format byte %#02x)", ErrFutureEntryFormat, data[1])
	}
	if len(data) < 3 {
		return e, fmt.Errorf("%w: the version header is cut short (%d bytes)", ErrMalformedEntry, len(data))
	}
	h := int(data[2])
	if h < stampLen || len(data) < 3+h {
		return e, fmt.Errorf("%w: version header of %d bytes in an entry of %d bytes (the header needs at least %d)", ErrMalformedEntry, h, len(data), stampLen)
	}
	e.Needs = version.V{
		Major: binary.BigEndian.Uint16(data[3:]),
		Minor: binary.BigEndian.Uint16(data[5:]),
		Patch: binary.BigEndian.Uint16(data[7:]),
	}
	e.Body = data[3+h:]
	return e, nil
}

// isControl reports whether b is a control character other than JSON
// whitespace: JSON cannot start with one.
func isControl(b byte) bool {
	return b < 0x20 && b != '\t' && b != '\n' && b != '\r'
}

// Bytes encodes the entry: legacy if e.Legacy, stamped otherwise.
func (e Entry) Bytes() []byte {
	if e.Legacy {
		return append([]byte{byte(e.Type)}, e.Body...)
	}
	b := make([]byte, 3+stampLen, 3+stampLen+len(e.Body))
	b[0], b[1], b[2] = byte(e.Type), stampMarker, stampLen
	binary.BigEndian.PutUint16(b[3:], e.Needs.Major)
	binary.BigEndian.PutUint16(b[5:], e.Needs.Minor)
	binary.BigEndian.PutUint16(b[7:], e.Needs.Patch)
	return append(b, e.Body...)
}

// commandInfo is a command type's row in the version table.
type commandInfo struct {
	name  string
	since version.V // the release that introduced it
}

// v0_1_0 is the first release with version stamps. Every command type
// that legacy entries can hold was introduced in it or before.
var v0_1_0 = version.MustParse("0.1.0")

// commands is the version table: every command type this version knows and
// the release that introduced it. Add a row with every new command type
// (with the new release, version.Version, raised in the same change); never
// change or remove a row. The FSM applies exactly these types.
var commands = map[CommandType]commandInfo{
	CmdBootstrap:       {"Bootstrap", v0_1_0},
	CmdAddNodes:        {"AddNodes", v0_1_0},
	CmdSetState:        {"SetState", v0_1_0},
	CmdSetToken:        {"SetToken", v0_1_0},
	CmdJoin:            {"Join", v0_1_0},
	CmdRemoveNode:      {"RemoveNode", v0_1_0},
	CmdClusterShutdown: {"ClusterShutdown", v0_1_0},
	CmdSetDHCP:         {"SetDHCP", v0_1_0},
	CmdRecordLease:     {"RecordLease", v0_1_0},
	CmdReplaceVoter:    {"ReplaceVoter", v0_1_0},
	CmdSetLocation:     {"SetLocation", v0_1_0},
	CmdSetLoadLevel:    {"SetLoadLevel", v0_2_0},
	CmdSetBlocked:      {"SetBlocked", v0_2_0},
	CmdMoved:           {"Moved", v0_2_0},
	CmdSetCFS:          {"SetCFS", v0_3_0},
	CmdSetJobRoot:      {"SetJobRoot", v0_3_0},
	CmdAddVIP:          {"AddVIP", v0_3_0},
	CmdRemoveVIP:       {"RemoveVIP", v0_3_0},
	CmdSetDirector:     {"SetDirector", v0_3_0},
	CmdSetVIP:          {"SetVIP", v0_3_0},
	CmdSetNetPool:      {"SetNetPool", v0_4_0},
	CmdAssignNetAddr:   {"AssignNetAddr", v0_4_0},
	CmdReleaseNetAddr:  {"ReleaseNetAddr", v0_4_0},
}

// v0_2_0 added load leveling (CmdSetLoadLevel) blocked nodes (CmdSetBlocked) and moves in the history (CmdMoved).
var v0_2_0 = version.MustParse("0.2.0")

// v0_3_0 added the cluster filesystem's replica and failover (CmdSetCFS),
// the cluster setting of jobs' root (CmdSetJobRoot) and the cluster
// virtual IP (CmdAddVIP, CmdRemoveVIP, CmdSetDirector, CmdSetVIP).
var v0_3_0 = version.MustParse("0.3.0")

// v0_4_0 added the address pool of --net jobs and their addresses
// (CmdSetNetPool, CmdAssignNetAddr, CmdReleaseNetAddr).
var v0_4_0 = version.MustParse("0.4.0")

// Introduced returns the release that introduced command type t, and false
// if this version does not know t.
func Introduced(t CommandType) (version.V, bool) {
	info, ok := commands[t]
	return info.since, ok
}

// String is the command's name and number, e.g. "SetState (3)", or
// "unknown (11)".
func (t CommandType) String() string {
	if info, ok := commands[t]; ok {
		return fmt.Sprintf("%s (%d)", info.name, byte(t))
	}
	return fmt.Sprintf("unknown (%d)", byte(t))
}

// Skippable reports whether a node that does not know t may skip it.
func (t CommandType) Skippable() bool { return t&IgnoreUnknown != 0 }

// CheckEntry reports whether this version can apply an entry: nil, or the
// *HaltError the FSM would halt with (with Index 0). A skippable entry this
// version does not know passes (the FSM skips it). A leader should check an
// entry forwarded by another node before appending it to the log, and
// refuse it rather than halt on it.
func CheckEntry(data []byte) error {
	e, err := DecodeEntry(data)
	if h := check(0, e, err); h != nil {
		return h
	}
	return nil
}

// check returns the reason to halt on entry e (decoded with error err) at
// index, or nil when the entry can be applied or skipped.
func check(index uint64, e Entry, err error) *HaltError {
	if err != nil && !errors.Is(err, ErrFutureEntryFormat) {
		return nil // malformed: refused, the same way on every version
	}
	_, known := Introduced(e.Type)
	tooNew := err != nil || !known || version.Current.Less(e.Needs)
	if !tooNew || e.Type.Skippable() {
		return nil
	}
	h := &HaltError{Index: index, Type: e.Type, Node: version.Current, Needs: e.Needs}
	switch {
	case err != nil:
		h.Detail = err.Error()
	case !known:
		h.Detail = fmt.Sprintf("command type %d is unknown to this version", byte(e.Type))
	default:
		h.Detail = fmt.Sprintf("this %s entry uses features of a newer version", commands[e.Type].name)
	}
	return h
}
