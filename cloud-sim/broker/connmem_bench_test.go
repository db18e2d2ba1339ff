package broker

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
)

// BenchmarkConnectionMemory measures the broker's heap per idle connected
// client: 2,000 MQTT v5 clients connect (a bare CONNECT each, no
// subscription) and the heap's growth after GC is divided among them. The
// clients' side of each connection, in this process too, is a net.Conn
// and a few hundred bytes. It uses only Start's API, so that the same file
// measures an older broker (docs/benchmarks.md, issue 15).
func BenchmarkConnectionMemory(b *testing.B) {
	const clients = 2000
	for b.Loop() {
		br, err := Start(Config{})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, clients)
		for i := range conns {
			conns[i] = rawConnect(b, br.Addr(), fmt.Sprintf("idle-%d", i))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/clients/1024, "KiB/connection")
		for _, c := range conns {
			c.Close()
		}
		br.Close()
	}
}

// rawConnect sends an MQTT v5 CONNECT (clean start, keep-alive 60 s) and
// reads the CONNACK.
func rawConnect(b *testing.B, addr, id string) net.Conn {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0}
	body = binary.BigEndian.AppendUint16(body, uint16(len(id)))
	body = append(body, id...)
	if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		b.Fatal(err)
	}
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil || head[0] != 0x20 {
		b.Fatalf("CONNACK of %s: %x %v", id, head, err)
	}
	if _, err := io.ReadFull(conn, make([]byte, head[1])); err != nil {
		b.Fatal(err)
	}
	return conn
}
