// Package version holds the build version of csi-cache, set at link time:
//
//	go build -ldflags "-X github.com/csi-cache/csi-cache/internal/version.Version=v0.1.0"
package version

// Version is the release version. "dev" when built without -ldflags.
var Version = "dev"

// Commit is the git commit the binary was built from, "unknown" by default.
var Commit = "unknown"
