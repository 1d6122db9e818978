package nbd

import (
	"sync/atomic"
	"time"
)

// RequestInfo describes one finished transmission request.
type RequestInfo struct {
	Export  string
	Command Command // CmdUnknown for request types the server does not know
	Flags   uint16  // command flags as sent
	Length  uint32  // requested length
	Errno   Errno   // 0 on success
	// Latency is from the moment the request header was read to the moment
	// the writer picked up the reply (backend time plus queueing).
	Latency time.Duration
}

// Observer receives an event per request, from the connection's writer
// goroutine: it must be quick and must not block. It is the hook for metrics
// (Prometheus histograms are wired outside this package).
type Observer interface {
	ObserveRequest(RequestInfo)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(RequestInfo)

// ObserveRequest implements Observer.
func (f ObserverFunc) ObserveRequest(i RequestInfo) { f(i) }

// CommandStats counts requests of one command.
type CommandStats struct {
	Requests uint64
	Errors   uint64 // replies with a nonzero error
	Bytes    uint64 // bytes read or written by successful READ and WRITE
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	ActiveConnections uint64
	TotalConnections  uint64
	// Commands is keyed by command; CmdUnknown collects unknown types.
	Commands map[Command]CommandStats
}

type commandCounters struct {
	requests, errors, bytes atomic.Uint64
}

type counters struct {
	activeConns, totalConns atomic.Uint64
	cmds                    [numCommands + 1]commandCounters // last slot: unknown
}

func (c *counters) count(cmd Command, errno Errno, length uint32) {
	i := int(cmd)
	if i >= numCommands {
		i = numCommands
	}
	cc := &c.cmds[i]
	cc.requests.Add(1)
	if errno != 0 {
		cc.errors.Add(1)
	} else if cmd == CmdRead || cmd == CmdWrite {
		cc.bytes.Add(uint64(length))
	}
}

func (c *counters) snapshot() Stats {
	s := Stats{
		ActiveConnections: c.activeConns.Load(),
		TotalConnections:  c.totalConns.Load(),
		Commands:          make(map[Command]CommandStats),
	}
	for i := range c.cmds {
		cc := &c.cmds[i]
		cs := CommandStats{Requests: cc.requests.Load(), Errors: cc.errors.Load(), Bytes: cc.bytes.Load()}
		if cs.Requests == 0 {
			continue
		}
		cmd := Command(i)
		if i == numCommands {
			cmd = CmdUnknown
		}
		s.Commands[cmd] = cs
	}
	return s
}
