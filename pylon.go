// Package pylon holds Pylon's domain: the types every part of the platform
// speaks (devices, certificates, enrollment and API tokens, audit records)
// and the service interfaces that adapters implement.
//
// The package imports only the standard library, so that the device SDK and
// the command-line client can depend on it cheaply. Adapters live in
// subpackages, one per dependency (sqlite, broker, httpapi, pki, ...), and
// cmd/pylon wires them together.
package pylon

// Version is the release of this build. It is set at link time with
// -ldflags "-X github.com/pylonhq/pylon.Version=v1.2.3".
var Version = "dev"
