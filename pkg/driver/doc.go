// Package driver is the csi-cache CSI plugin.
package driver
