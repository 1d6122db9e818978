// Package ondisk encodes and decodes the metadata structures of a csi-cache cache
// set. Every decoder validates magic, version, lengths and crc32c checksum and
// returns a *CorruptionError (IsCorruption) for bad input; none panics on any input.
//
// The layout of the cache device is documented in layout.go.
package ondisk
