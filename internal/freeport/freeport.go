// Package freeport picks loopback ports for servers that are told their
// port rather than given a listener: a JetStream node, a qmaster or a
// redis-server started as another process.
//
// A port is only free until someone takes it, and the check (bind,
// close) cannot hold it for the server. The kernel hands ports of its
// ephemeral range (32768-60999 by default on Linux) to every outgoing
// connection and to every listener on port 0, so a port picked there,
// as listening on port 0 picks one, is soon taken again by the next
// connection any process makes: on a machine running tests in parallel,
// often before the server has bound it. Ports below that range are given
// to no one unless asked for by number, so Loopback picks there.
package freeport

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// lowest is the lowest port Loopback picks: above the well-known and most
// registered services' ports.
const lowest = 20000

// tries bounds the random ports Loopback checks before it gives up.
const tries = 100

// Loopback returns "127.0.0.1:PORT" for a port that was free a moment
// ago, below the kernel's ephemeral range when there is room below it,
// else one the kernel picks.
func Loopback() (string, error) {
	if first := ephemeralStart(); first-lowest >= 1000 {
		for range tries {
			port := lowest + rand.IntN(first-lowest)
			if !claim(port) {
				continue
			}
			addr := "127.0.0.1:" + strconv.Itoa(port)
			if ln, err := net.Listen("tcp", addr); err == nil {
				ln.Close()
				return addr, nil
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Port is Loopback's port.
func Port() (int, error) {
	addr, err := Loopback()
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(addr)
	return strconv.Atoi(p)
}

// claimFor is how long a port Loopback returned is not returned again by
// it, in this or another process of the same machine: long enough for
// the server it was picked for to bind it. Two test packages run at once
// picked the same port (CI, 2026-12-04: "bind: address already in use"
// for a JetStream node of qbench's failover test).
const claimFor = 2 * time.Minute

// claim records port as picked, in a file of its own under the temporary
// directory, unless another pick holds it (its file is younger than
// claimFor). Without the directory, every port may be picked.
func claim(port int) bool {
	dir := filepath.Join(os.TempDir(), "qm-freeport")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true
	}
	name := filepath.Join(dir, strconv.Itoa(port))
	for range 2 {
		f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
		if err == nil {
			f.Close()
			return true
		}
		if !errors.Is(err, fs.ErrExist) {
			return true
		}
		fi, err := os.Stat(name)
		if err != nil || time.Since(fi.ModTime()) < claimFor {
			return false
		}
		_ = os.Remove(name) // an old claim: taken anew, by one process
	}
	return false
}

// ephemeralStart is the first port of the kernel's ephemeral range, or 0
// when it cannot be read (not Linux).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}
