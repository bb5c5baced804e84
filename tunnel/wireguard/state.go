package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/tunnel"
)

// endState is what one end of a link installed, recorded before it is
// installed so Close can remove it even after a crash. No keys.
type endState struct {
	Role   string         `json:"role"`
	Host   string         `json:"host"`
	Device string         `json:"device"`
	Routes []netip.Prefix `json:"routes,omitempty"` // through Device, in Table
	Table  int            `json:"table,omitempty"`  // 0 = main
	Rules  []netip.Prefix `json:"rules,omitempty"`  // "from <prefix> lookup Table"
	Proxy  []proxyEntry   `json:"proxy,omitempty"`
	// Neigh and Own: the VM's neighbour entries and the host's own LAN
	// addresses announced to it (End.MAC; remote end only).
	Neigh   []arp.Neighbour `json:"neigh,omitempty"`
	Own     []arp.Own       `json:"own,omitempty"`
	Sysctls []sysctlSave    `json:"sysctls,omitempty"`
}

// linkState is a link's state file.
type linkState struct {
	Link tunnel.Link `json:"link"`
	Ends []endState  `json:"ends"` // secure end, then remote end
}

func (l *Linker) statePath(id string) string { return filepath.Join(l.stateDir, id+".json") }

// saveState writes st atomically (no-op without a state dir).
func (l *Linker) saveState(st *linkState) error {
	if l.stateDir == "" {
		return nil
	}
	if err := os.MkdirAll(l.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := l.statePath(st.Link.ID)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// loadState reads link id's state file; ok=false if there is none.
func (l *Linker) loadState(id string) (*linkState, bool, error) {
	if l.stateDir == "" {
		return nil, false, nil
	}
	b, err := os.ReadFile(l.statePath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("state file: %w", err)
	}
	var st linkState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, false, fmt.Errorf("state file %s: %w", l.statePath(id), err)
	}
	if len(st.Ends) != 2 || st.Link.ID != id {
		return nil, false, fmt.Errorf("state file %s: not a link %q", l.statePath(id), id)
	}
	return &st, true, nil
}

func (l *Linker) removeState(id string) error {
	if l.stateDir == "" {
		return nil
	}
	return removeIfExists(l.statePath(id))
}

// stateIDs lists the link IDs that have state files.
func (l *Linker) stateIDs() ([]string, error) {
	if l.stateDir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(l.stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
