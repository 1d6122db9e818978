// Package driver is the csi-cache CSI plugin: the Identity, Controller and
// Node services of one node, served on one gRPC socket (CSI spec v1.13.0).
//
// # Deployment model
//
// Volumes are node-local: their cache, and by default their backing files,
// live on one node. The plugin runs as a DaemonSet; beside each instance the
// external-provisioner runs with --node-deployment, so every node provisions
// the volumes scheduled to it (StorageClass volumeBindingMode
// WaitForFirstConsumer, storage capacity tracking from GetCapacity). Each
// volume's accessible topology is {topology.csi-cache.io/node: <node id>}.
//
// # Layers
//
//	gRPC ── intercept (klog + protosanitizer, toStatus) ── Driver
//	                                                        │
//	  identity.go   GetPluginInfo, capabilities, Probe ─────┤ VolumeStore (store.go)
//	  controller.go Create/Delete/Expand/List/Get, capacity │   EngineStore: *engine.CacheSet
//	  node.go       Stage/Publish/Unpublish/Unstage, stats, │ Attacher (attach.go)
//	                expand, health                          │   NewNBDAttacher: pkg/nbd + netlink
//	  adopt.go      re-adoption after a restart             │ Mounter (mount.go)
//	                                                        │   NewMounter: k8s.io/mount-utils
//	                                                        └ stateDir (state.go): stage records
//
// The three interfaces keep the kernel out of the tests: package drivertest
// has an in-memory cache set, a kernel whose NBD devices outlive plugin
// processes, and a mounter that records mounts, and csi-sanity runs against
// the driver built from them.
//
// # Life of a volume
//
//	CreateVolume      engine volume (cacheMode, sequentialCutoff, backing);
//	                  idempotent by name, AlreadyExists on an incompatible repeat
//	NodeStageVolume   NBD export + kernel device (Attacher.Attach); stage record
//	                  written; mount access: mkfs if blank, mount at the staging
//	                  path; block access: nothing more
//	NodePublishVolume bind mount of the staging path (mount) or of the device
//	                  (block) at the target, read-only if asked
//	NodeExpandVolume  engine resize (if the controller has not), device resize,
//	                  resize2fs / xfs_growfs
//	NodeUnstageVolume unmount, detach (the kernel flushes), remove the export
//	                  (flushes the volume), remove the record
//	DeleteVolume      refused while staged; invalidates the cached data and
//	                  removes the backing data
//
// A plugin that exits (upgrade, crash) unstages nothing: the kernel devices
// wait for new sockets and stay mounted. The next process re-opens the cache
// set, reads the stage records and reattaches each device (adopt.go).
//
// # Locks
//
// Every call that touches a volume holds that volume's lock (locks.go); a
// second call on the same volume meanwhile fails with Aborted, which the CO
// retries. Lock order: volume lock, then Driver.spaceMu (capacity check
// plus create or grow), then Driver.mu (devices, stage slots).
//
// # Errors
//
// Handlers return Go errors wrapping the driver's sentinels (ErrInvalid,
// ErrNotFound, ...) or the engine's; the interceptor turns them into gRPC
// codes with toStatus, the one place where codes are chosen (errors.go).
package driver
