// Package alloc is the bucket allocator of one cache device: free lists with
// reserves, per-bucket generations and usage accounting, and the allocator
// goroutine that refills the free lists by invalidating clean data buckets chosen
// by a replacement Policy (bcache: drivers/md/bcache/alloc.c).
//
// # Buckets and generations
//
// The data area of the cache device is NBuckets buckets. Every bucket has a
// generation (gen). A pointer (bucket, offset, gen) is valid only while gen equals
// the bucket's current gen, so bumping a bucket's gen makes every pointer into it
// stale at once, without touching the btree. A bucket is never handed out for
// writing before its bumped gen is durable (GenStore.PersistGens returned nil):
// after a crash, old pointers must not find new data under their old gen.
// Gens are 32 bits and compared for equality only; GC drops stale pointers long
// before a bucket is reused 2^32 times.
//
// A clean, closed data bucket can be invalidated at any moment, so a caller that
// acts on such a bucket through an old pointer uses the ...Gen methods (FreeGen,
// AddSectorsGen, SetUsageGen), which return ErrStale instead of touching a bucket
// that now holds someone else's data.
//
// # Bucket life cycle
//
//	   New: every bucket starts "freed" (dead, needs a gen bump before reuse)
//	                 |
//	                 | Load(b, kind, live, dirty)   (open time, before the first refill)
//	                 v
//	+-----------+  Alloc   +------------------------+   Free(b) (contents dead)
//	| free list | -------> |         in use         | ----------------------+
//	| [reserve] |          | kind data/btree/meta   |                       |
//	+-----------+          | live, dirty, open pins |                       v
//	      ^                +------------------------+                 +-----------+
//	      |                      | evict: Policy victim, clean,       |   freed   |
//	      |                      | closed, kind data                  |   queue   |
//	      |                      v                                    +-----------+
//	      |   PersistGens ok +--------------+   gen++ (in memory)         |
//	      +------------------| invalidating | <---------------------------+
//	                         +--------------+
//
// The allocator goroutine (Start/Close) moves buckets around the bottom loop in
// batches: it takes explicitly freed buckets first, then clean data buckets the
// Policy names, bumps their gens under mu, drops mu, persists all the new gens with
// one GenStore.PersistGens call, relocks and puts the buckets on the free lists.
// A bucket with dirty sectors, an open bucket, and a btree or metadata bucket are
// never invalidated: those leave "in use" only through Free.
//
// # Reserves
//
// There is one free list per Reserve. The reserve lists (ReserveMeta, ReserveBtree,
// ReserveMovingGC) hold up to Config.Reserve* buckets and are refilled first; the
// rest go to the general list (ReserveNone). Alloc(ReserveNone) takes only from the
// general list, so data never takes the last reserved buckets; an allocation with a
// reserve takes from the general list first and dips into its own reserve only when
// the general list is empty. So a btree split can always complete when data
// allocation has already failed (and the data path bypasses the cache).
//
// # Why the allocator goroutine cannot deadlock
//
// bcache's allocator thread could wait forever on a free list that only it
// refills (prio_write allocating from the reserve it was about to fill, or waiting
// for free_inc space while GC waited for it). Here the goroutine never waits for a
// bucket:
//   - it never calls Alloc, and never waits on cond; it holds mu only for short,
//     non-blocking sections;
//   - GenStore.PersistGens is called without mu, so the store may call any
//     non-waiting method (Alloc with wait=false, Gen, Stats, ...). The contract is
//     that PersistGens must make progress without any bucket being allocated:
//     the gens pages live at a fixed place on the device; a store that needs a
//     bucket takes it with Alloc(ReserveMeta, KindMeta, false) and fails (rather
//     than waits) on ErrNoBuckets;
//   - the free lists never fill up: the general list has room for every bucket,
//     and buckets that do not fit a reserve list go to the general list;
//   - wake-ups are non-blocking sends on a 1-buffered channel.
//
// # Concurrency
//
// An Allocator is safe for concurrent use. Allocator.mu guards the bucket state,
// the free lists and the Policy (Policies are not safe for concurrent use; the
// Allocator calls them with mu held). mu is a leaf lock: nothing else is locked while
// it is held and it is never held across device I/O, so callers may hold their own
// locks (btree, journal) when they call the allocator. Gens are also kept in atomics
// so that Gen and IsStale, called on every cache hit, take no lock.
package alloc
