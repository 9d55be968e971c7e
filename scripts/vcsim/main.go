// vcsim for vmscan's tests: govmomi's vCenter simulator (simulator.VPX(),
// vCenter 6.5 behaviour) served on -listen, with the given service account.
// Prints its SDK URL on stdout; with -tls serves HTTPS with -tlscert and
// -tlskey (as vcsim's own flags of those names), else with the simulator's
// built-in certificate. Runs until killed.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	user := flag.String("username", "vmscan@vsphere.local", "service account")
	pass := flag.String("password", "", "its password (env VCSIM_PASSWORD when empty)")
	useTLS := flag.Bool("tls", false, "serve HTTPS")
	cert := flag.String("tlscert", "", "with -tls: certificate (PEM)")
	key := flag.String("tlskey", "", "with -tls: its private key (PEM)")
	flag.Parse()
	if *pass == "" {
		*pass = os.Getenv("VCSIM_PASSWORD")
	}
	m := simulator.VPX()
	if err := m.Create(); err != nil {
		log.Fatal(err)
	}
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	if !*useTLS {
		m.Service.TLS = nil
	} else if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	s := m.Service.NewServer()
	u := *s.URL
	u.User = nil
	fmt.Println(u.String())
	select {}
}
