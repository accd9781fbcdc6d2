// Command umc-vcsim serves the govmomi vCenter simulator (VPX model) for the umc_infra sandbox.
//
// Configuration comes from the environment, never from argv, so the sandbox password stays out of
// the process table:
//
//	UMC_VCSIM_LISTEN    host:port to listen on (loopback only; required)
//	UMC_VCSIM_USER      user name that may log in (required)
//	UMC_VCSIM_PASSWORD  its password (required)
//
// The inventory is the VPX model without its sample VMs; the sandbox seeds folders and the template
// VM through the vSphere API after start. On SIGINT or SIGTERM the server stops and the model removes
// its datastore directories (created under TMPDIR).
//
// Build it through umc_infra.sandbox._vcsim.ensure_built, not a bare `go build`: that lays govmomi 0.28's
// CloneVM_Task fix (a clone gets a copy of the source VM's devices) over Debian's govmomi 0.24.2 source.
package main

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"

	_ "github.com/vmware/govmomi/cns/simulator"
	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/cluster/simulator"
	_ "github.com/vmware/govmomi/vapi/namespace/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func mustEnv(name string) string {
	v := os.Getenv(name)
	if v == "" {
		log.Fatalf("umc-vcsim: %s must be set", name)
	}
	return v
}

func main() {
	listen := mustEnv("UMC_VCSIM_LISTEN")
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		log.Fatalf("umc-vcsim: UMC_VCSIM_LISTEN=%q: %v", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("umc-vcsim: refusing to listen on %q: loopback addresses only", host)
	}

	model := simulator.VPX()
	model.Machine = 0
	if err := model.Create(); err != nil {
		log.Fatalf("umc-vcsim: creating the model: %v", err)
	}
	model.Service.Listen = &url.URL{
		Host: listen,
		User: url.UserPassword(mustEnv("UMC_VCSIM_USER"), mustEnv("UMC_VCSIM_PASSWORD")),
	}
	model.Service.TLS = new(tls.Config)
	model.Service.RegisterEndpoints = true

	server := model.Service.NewServer()
	fmt.Printf("umc-vcsim listening on %s\n", server.URL.Host)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig

	server.Close()
	model.Remove()
}
