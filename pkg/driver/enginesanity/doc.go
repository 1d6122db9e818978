// Package enginesanity runs csi-sanity against the driver over the real cache
// engine, in a test binary of its own (ginkgo runs one suite per process).
package enginesanity
