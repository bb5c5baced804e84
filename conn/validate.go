package conn

import "fmt"

// ValidateConns names the first of conns a ConnAuditor's Reset cannot act
// on: its Proto must be TCP or UDP and its Local and Remote valid
// addresses with ports.
func ValidateConns(conns []Conn) error {
	for i, c := range conns {
		switch {
		case c.Proto != TCP && c.Proto != UDP:
			return fmt.Errorf("%w: conns[%d].Proto %q is not tcp or udp", ErrInvalid, i, c.Proto)
		case !c.Local.IsValid():
			return fmt.Errorf("%w: conns[%d].Local is not a valid address", ErrInvalid, i)
		case !c.Remote.IsValid():
			return fmt.Errorf("%w: conns[%d].Remote is not a valid address", ErrInvalid, i)
		}
	}
	return nil
}
