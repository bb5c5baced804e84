package etcdlab

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy between clients and one member: a test points a
// client at Endpoint, then cuts it off from the cluster (Cut) and lets
// it back (Heal).
type Proxy struct {
	l      net.Listener
	target string

	mu      sync.Mutex
	cut     bool
	clients map[net.Conn]bool // the client side of every connection
	up      map[net.Conn]bool // the member side
	wg      sync.WaitGroup
}

// Proxy returns a proxy to member i's client URL, closed by t.Cleanup.
func (c *Cluster) Proxy(t testing.TB, i int) *Proxy {
	t.Helper()
	return NewProxy(t, c.Members[i].ClientURL.Host)
}

// NewProxy returns a proxy to target (host:port), closed by t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdlab: proxy: %v", err)
	}
	p := &Proxy{l: l, target: target, clients: map[net.Conn]bool{}, up: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Endpoint is the URL a client of the proxy uses.
func (p *Proxy) Endpoint() string { return "http://" + p.l.Addr().String() }

// Cut partitions the proxy's clients from the member, as a network
// would: what they send is dropped and nothing comes back; connections
// stay open (no reset tells them), new ones are accepted and hang.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.up {
		c.Close()
	}
}

// Heal ends the partition: the connections that lived through it are
// closed (their clients connect again), new ones go through.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c := range p.clients {
		c.Close()
	}
}

func (p *Proxy) close() {
	p.l.Close()
	p.mu.Lock()
	for c := range p.clients {
		c.Close()
	}
	for c := range p.up {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.clients[c] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

// track adds or removes a connection of set.
func (p *Proxy) track(set map[net.Conn]bool, c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		set[c] = true
	} else {
		delete(set, c)
	}
}

func (p *Proxy) isCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// serve relays client connection c to the member while the proxy is not
// cut; cut, it swallows what c sends until c is closed (by Heal, or the
// client).
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer p.track(p.clients, c, false)
	defer c.Close()
	if !p.isCut() {
		if u, err := net.Dial("tcp", p.target); err == nil {
			p.track(p.up, u, true)
			if p.isCut() { // cut while dialing
				u.Close()
			}
			relayed := make(chan struct{})
			go func() {
				defer close(relayed)
				io.Copy(c, u)
				if !p.isCut() {
					c.Close() // the member closed: so does the proxy
				}
			}()
			io.Copy(u, c)
			u.Close()
			<-relayed
			p.track(p.up, u, false)
		} else {
			return
		}
	}
	if p.isCut() {
		io.Copy(io.Discard, c)
	}
}
