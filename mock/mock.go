// Package mock provides function-field fakes of the root package's service
// interfaces, for testing the layers above a store (such as httpapi
// handlers) without one.
//
// Each fake has one field per interface method, named after the method with
// an Fn suffix; calling a method whose field is nil panics, so that a test
// notices an unexpected call. Fakes record nothing themselves: tests capture
// what they need in the functions they set.
package mock
