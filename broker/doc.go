// Package broker is Pylon's embedded MQTT broker, built on mochi-mqtt v2
// with hooks rather than a loopback client.
//
// Devices connect over mutual TLS only: each presents a certificate signed
// by the Pylon CA whose subject common name is its device id, and the MQTT
// client id must equal that id. At every CONNECT the store is asked whether
// the certificate and the device may connect (see
// pylon.CertificateService.AuthorizeConnection). A device may publish and
// subscribe only under "devices/{its id}/". Optional integration
// listeners (TLS without a client certificate, or plain TCP) admit platform
// integrations that log in with an API token; they may subscribe under
// "devices/" and never publish, and a token revoked or expired since ends
// their sessions within Options.IntegrationRecheck.
//
// With Options.Ingest, each PUBLISH of a device to
// "devices/{id}/telemetry" is verified and stored before it is
// acknowledged; a refused message is answered with its MQTT 5 reason code
// and reported on "devices/{id}/errors", which only the platform may
// publish to.
//
// The hooks live one per file: auth.go (CONNECT), acl.go (topics),
// connection.go (online/offline and DisconnectDevice), integration.go
// (integrations' tokens checked again), telemetry.go
// (ingest) and metrics.go. README.md holds the design notes, the limits and
// the lock ordering.
package broker
