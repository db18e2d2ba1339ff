// Command testapp is the program inside the images that tests build. Its
// behaviour is chosen by environment variables, so one binary serves every
// scenario:
//
//	MODE=serve      serve HTTP on $PORT (default 8080): / answers $MESSAGE, /healthz 200
//	MODE=exit       exit with $EXIT_CODE after $DELAY (default 0s)
//	MODE=unhealthy  serve, but /healthz answers 500
//	MODE=oom        allocate memory until killed
//
// SYMLINK=path=target first makes path a symlink to target (a container
// writing a link into a bind mount, as the local-policy scenarios attack).
//
// "testapp probe" GETs http://127.0.0.1:$PORT/healthz and exits 0 on 200:
// it is the health check command.
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	port := env("PORT", "8080")
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		resp, err := http.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		os.Exit(0)
	}()
	if path, target, ok := strings.Cut(os.Getenv("SYMLINK"), "="); ok {
		if err := os.Symlink(target, path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	switch env("MODE", "serve") {
	case "exit":
		d, _ := time.ParseDuration(env("DELAY", "0s"))
		time.Sleep(d)
		code, _ := strconv.Atoi(env("EXIT_CODE", "0"))
		os.Exit(code)
	case "oom":
		d, _ := time.ParseDuration(env("DELAY", "0s"))
		time.Sleep(d)
		var hog [][]byte
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			hog = append(hog, b)
			fmt.Fprintf(os.Stderr, "%d MiB allocated\n", len(hog))
		}
	}
	healthy := env("MODE", "serve") != "unhealthy"
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, env("MESSAGE", "hello")) })
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !healthy {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
