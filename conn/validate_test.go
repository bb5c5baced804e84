package conn_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sealift/sealift/conn"
)

func TestValidateConns(t *testing.T) {
	good := conn.Conn{Proto: conn.UDP, Local: netip.MustParseAddrPort("10.1.0.10:1"), Remote: netip.MustParseAddrPort("[fd02::20]:2")}
	if err := conn.ValidateConns([]conn.Conn{good, good}); err != nil {
		t.Fatalf("valid conns: %v", err)
	}
	if err := conn.ValidateConns(nil); err != nil {
		t.Fatalf("no conns: %v", err)
	}
	noPort := good
	noPort.Proto, noPort.Remote = conn.TCP, netip.AddrPort{}
	badProto, noLocal := good, good
	badProto.Proto = "sctp"
	noLocal.Local = netip.AddrPort{}
	for _, tc := range []struct {
		conns []conn.Conn
		names string
	}{
		{[]conn.Conn{good, badProto}, `conns[1].Proto "sctp"`},
		{[]conn.Conn{noLocal, badProto}, "conns[0].Local"},
		{[]conn.Conn{good, good, noPort}, "conns[2].Remote"},
	} {
		err := conn.ValidateConns(tc.conns)
		if !errors.Is(err, conn.ErrInvalid) || !strings.Contains(err.Error(), tc.names) {
			t.Errorf("ValidateConns = %v, want ErrInvalid naming %s", err, tc.names)
		}
	}
}
