// apiproxy forwards TCP connections from -listen to -target, byte for byte
// (TLS passes through: the API server's certificate names the Service IP).
// e2e/node/up runs it on the kubernetes Service's address, which it puts on
// the pod bridge, so that in-cluster clients reach the loopback API server.
package main

import (
	"flag"
	"io"
	"log"
	"net"
)

func main() {
	listen := flag.String("listen", "10.0.0.1:443", "address to accept on")
	target := flag.String("target", "127.0.0.1:16443", "address to forward to")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("forwarding %s -> %s", *listen, *target)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", *target)
			if err != nil {
				log.Printf("dial %s: %v", *target, err)
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if t, ok := dst.(*net.TCPConn); ok {
					t.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(u, c)
			go pipe(c, u)
			<-done
			<-done
		}()
	}
}
