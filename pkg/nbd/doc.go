// Package nbd serves engine volumes over the NBD protocol (fixed newstyle,
// simple replies) so that the kernel's nbd driver, or any NBD client, can
// attach them as block devices.
//
// The protocol is specified in
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md. Magic
// numbers and the few constants it defines come from
// github.com/pojntfx/go-nbd/pkg/protocol; the rest are in proto.go. All
// integers are big-endian.
//
// # Handshake (fixed newstyle)
//
//	S: +-----------------+-----------------+-----------+
//	   | "NBDMAGIC" (64) | "IHAVEOPT" (64) | hflags(16)|  FIXED_NEWSTYLE|NO_ZEROES
//	   +-----------------+-----------------+-----------+
//	C: +-----------+
//	   | cflags(32)|  unknown bits → hard disconnect
//	   +-----------+
//	C: +-----------------+---------+---------+------------+
//	   | "IHAVEOPT" (64) | opt(32) | len(32) | data (len) |   repeated
//	   +-----------------+---------+---------+------------+
//	S: +-------------------+---------+----------+---------+------------+
//	   | 0x3e889045565a9   | opt(32) | type(32) | len(32) | data (len) |
//	   +-------------------+---------+----------+---------+------------+
//
// Options served: EXPORT_NAME (ends haggling; unknown name → hard disconnect),
// INFO and GO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE; the
// block size reply is always sent), LIST, ABORT. Everything else, including
// STARTTLS and STRUCTURED_REPLY, gets NBD_REP_ERR_UNSUP, so transmission
// always uses simple replies. Option data longer than 64 KiB is skipped
// (up to 1 MiB) and answered NBD_REP_ERR_TOO_BIG; longer than that, or a bad
// magic, is a hard disconnect.
//
// # Transmission
//
//	C: +--------------+----------+---------+-------------+-------------+---------+-------------+
//	   | 0x25609513   | flags(16)| type(16)| cookie(64)  | offset(64)  | len(32) | data (WRITE)|
//	   +--------------+----------+---------+-------------+-------------+---------+-------------+
//	S: +--------------+----------+-------------+--------------------------+
//	   | 0x67446698   | error(32)| cookie(64)  | data (READ and error==0) |
//	   +--------------+----------+-------------+--------------------------+
//
// Each connection has a reader goroutine and worker goroutines, and no
// goroutine of its own for writing:
//
//   - the reader parses request headers, validates them, reads WRITE
//     payloads into pooled buffers and starts a worker per request. It
//     admits at most Options.MaxInFlight requests and
//     Options.MaxInFlightBytes payload bytes at a time (a slot is held from
//     admission until the reply is on the wire), so memory per connection
//     is bounded. A small READ or WRITE (up to 64 KiB, no FUA) on a backend
//     whose recent small requests took under 20 µs (memory, page cache, a
//     cache hit) the reader executes itself: waking a worker would cost
//     more than the request. While more requests are buffered it holds
//     their replies back (up to 128 KiB) and writes them together before it
//     waits for anything. A slower backend gets a worker for every request.
//     If a request the reader executes takes over 500 µs after all (a miss
//     after many hits), a timer starts a new reader and the old one leaves
//     when its request is done, so a slow request never stops the
//     connection for long;
//   - workers call the Backend and queue the reply;
//   - whoever queues a reply while no one is writing becomes the writer: it
//     writes every queued reply with one vectored write, and again until
//     the queue is empty (replies queued meanwhile ride in the next batch).
//     Replies go out in completion order; clients match them by cookie.
//
// On unix sockets the send buffer is raised to 4 MiB (as far as
// net.core.wmem_max allows), so that a large READ reply is one write
// rather than a round trip through the poller per chunk.
//
// A READ reply header is only written once the data is in memory; a failed
// read gets an error reply without payload. Backend errors become NBD errnos
// (ErrnoOf) and the connection stays usable.
//
// Validation, in order: unknown command (incl. CACHE, BLOCK_STATUS) →
// EINVAL; WRITE/TRIM/WRITE_ZEROES on a read-only export → EPERM; command flags
// that were not advertised or do not apply to the command → EINVAL;
// TRIM/WRITE_ZEROES when not advertised → EINVAL; FLUSH with a nonzero offset
// or length → EINVAL; READ/WRITE longer than the maximum payload → EINVAL;
// offset or length not a multiple of the minimum block size → EINVAL;
// range beyond the end of the export → ENOSPC for WRITE/WRITE_ZEROES and
// EINVAL for READ/TRIM (the errors proto.md asks for). The export size is read
// from Backend.Size for every request, so a backend may grow.
//
// The payload of a rejected WRITE is read and discarded if it is at most
// 32 MiB (proto.md: such payloads are not a denial of service); a longer one
// is answered EINVAL and the connection is closed, since skipping it is not
// worth the bandwidth and the length is most likely garbage. A bad request
// magic closes the connection: the stream cannot be resynchronized.
//
// Alignment: exports advertise a minimum block size (default 512, what the
// kernel uses). Clients that asked for NBD_INFO_BLOCK_SIZE must obey it;
// clients that did not (EXPORT_NAME, or GO without the request) are not
// refused, but their misaligned requests get a clean EINVAL, as proto.md
// allows. A backend that handles any alignment reports MinBlockSize 1.
//
// NBD_CMD_FLAG_FUA is accepted on every command when advertised: it is passed
// to WriteAt and WriteZeroes, turns TRIM into Trim+Flush, and is a no-op on
// READ and FLUSH. NBD_CMD_FLAG_NO_HOLE is accepted on WRITE_ZEROES and
// ignored: Backend.WriteZeroes only promises that the range reads back as
// zeroes. The cache engine allocates buckets when data is written, so there
// is nothing to preallocate, and a later write to the range may still fail
// with ENOSPC.
//
// CAN_MULTI_CONN is advertised because Backend.Flush is export-wide: it
// persists every write any connection has been replied to.
//
// # Shutdown
//
// Server.Shutdown stops the listeners, stops every connection's reader (a
// read deadline in the past; a request whose header or payload was only
// partly read is dropped without a reply, and the kernel requeues it on a new
// connection), waits for in-flight requests to be replied to, closes the
// connections and flushes every export.
//
// # Locking
//
// Lock order: Server.mu, then conn.mu, then conn.slotMu. conn.wmu (the
// reply queue) is never held with another lock. No lock is held across
// Backend calls or socket I/O, except conn.mu around SetDeadline.
package nbd
