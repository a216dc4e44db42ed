package registry_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/visorhq/visor/registry"
)

// Example shows the registry used as a library: define an app, a revision
// and a process type, then ask for three instances. (Compiled, not run: it
// needs an etcd at 127.0.0.1:2379, such as `visor agent -dev`.)
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := registry.Dial(ctx, registry.Config{Endpoints: []string{"127.0.0.1:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	if _, err := r.RegisterApp(ctx, registry.App{Name: "web", Stack: "go"}); err != nil {
		log.Fatal(err)
	}
	if _, err := r.RegisterRevision(ctx, registry.Revision{App: "web", Name: "v1", Dir: "/srv/web/v1"}); err != nil {
		log.Fatal(err)
	}
	if _, err := r.SetProcType(ctx, registry.ProcType{App: "web", Name: "http", Command: "bin/web --port $PORT",
		Restart: registry.RestartPolicy{Policy: "on-failure", MaxDelay: registry.Duration(time.Minute)}}); err != nil {
		log.Fatal(err)
	}
	res, err := r.Scale(ctx, "web", "v1", "http", 3)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("start tickets:", len(res.Started))
}
