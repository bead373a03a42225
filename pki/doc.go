// Package pki is Pylon's certificate authority and EST provisioning service.
//
// A CA lives in a directory as ca.crt (PEM, 0644) and ca.key (PKCS#8 PEM,
// 0600). LoadOrCreateCA creates an ECDSA P-256 root on first use and refuses
// to load a key that others can read, a key that does not match the
// certificate, or a certificate that is not a CA. The CA issues the
// platform's TLS server certificate (ServerCertificate), signs device client
// certificates from PKCS#10 requests (SignDevice) and produces the CRL.
//
// Device certificates carry only what the server decides: Subject
// CN=<device id>, O=Pylon devices; CA:false; key usage digital signature;
// extended key usage TLS client authentication. Nothing is copied from the
// CSR but its public key, so a CSR cannot ask for a CA certificate, another
// identity, SANs or other key usages.
//
// Service implements pylon.ProvisioningService on top of a CA and the
// store: simpleenroll (by enrollment token) and simplereenroll (by the
// current certificate) of RFC 7030. The EST wire format itself lives in
// package est.
package pki
