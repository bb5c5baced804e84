// Package conntest holds the test helpers the connection auditors'
// tests (conn/conntrack, conn/sockdiag) share: TCP echo servers and
// clients in the lab's namespaces, a self-signed TLS pair, an echo server
// in a child process for tests with thousands of sockets, the lab's IPv6
// addressing, the claim-10 session set and a runner for error cases.
// It is imported by tests only.
package conntest
