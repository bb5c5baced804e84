// Package examples holds programs that use sealift: quickstart (the flow
// on the in-memory fakes) and lab (the end-to-end lab on real namespaces,
// QEMU guests and links).
package examples
