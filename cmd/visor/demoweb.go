package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// newDemoWebCmd is the README quickstart's workload: a small HTTP server
// in the visor binary itself, so the quickstart needs nothing but Go
// (python's http.server needed python3, and logged only to stderr).
func newDemoWebCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo-web",
		Short: "serve a hello page on $PORT (the quickstart's workload)",
		Long: `demo-web is a tiny HTTP server for trying Visor out: run as a proc type's
command ('/path/to/visor demo-web'), it serves on 127.0.0.1:$PORT (or
--addr), answers every request with the instance's identity (VISOR_APP,
VISOR_REV, VISOR_PROC, VISOR_INSTANCE, VISOR_HOST), prints one line to
stdout when it starts and one line per request to stderr, and exits 0 on
SIGTERM or SIGINT.`,
		RunE: runWith(e, runDemoWeb),
	}
	cmd.Flags().String("addr", "", "address to listen on (default 127.0.0.1:$PORT)")
	return cmd
}

func runDemoWeb(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usageError("demo-web: unexpected argument %q", args[0])
	}
	addr := flagString(e, "addr")
	if addr == "" {
		port := os.Getenv("PORT")
		if port == "" {
			return usageError("demo-web: neither --addr nor $PORT is set")
		}
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("demo-web: %w", err)
	}
	who := fmt.Sprintf("%s (app %s, rev %s, proc %s) on host %s",
		os.Getenv("VISOR_INSTANCE"), os.Getenv("VISOR_APP"), os.Getenv("VISOR_REV"), os.Getenv("VISOR_PROC"), os.Getenv("VISOR_HOST"))
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s\n", who)
			fmt.Fprintf(e.stderr, "%s %s %s from %s\n", time.Now().UTC().Format(time.RFC3339), r.Method, r.URL.Path, r.RemoteAddr)
		}),
	}
	fmt.Fprintf(e.stdout, "demo-web: serving %s on http://%s/\n", who, ln.Addr())
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	select {
	case err := <-errCh:
		return fmt.Errorf("demo-web: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-errCh; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("demo-web: %w", err)
	}
	fmt.Fprintln(e.stdout, "demo-web: stopped")
	return nil
}
