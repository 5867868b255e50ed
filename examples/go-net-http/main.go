// The smallest Go app for the handoff hooks: net/http on the socket systemd passes (fd 3).
//
//	GET /            -> 200 "<RELEASE>\n", X-Release: <RELEASE>   (?sleep_ms=N: answer N ms later)
//	GET /healthz     -> 200 "ok\n", X-Instance: <INSTANCE>; 200 while draining too
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

const lameDuck = 500 * time.Millisecond

var (
	release  = getenv("RELEASE", "dev")
	instance = getenv("INSTANCE", "-")
	draining atomic.Bool // handoff: set on SIGTERM
)

func main() {
	listener, err := listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	srv := &http.Server{Handler: http.HandlerFunc(handle)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()

	// handoff: READY=1 (the unit is Type=notify): the start job completes only now.
	notify("READY=1")

	// handoff: by default Go dies at once on SIGTERM (in-flight requests lost). Drain instead.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	case <-stop:
	}
	// handoff: lame duck: every response now says `Connection: close` and /healthz answers 503,
	// so keep-alive clients leave after their current request. Shutdown() closes idle
	// keep-alive connections at once, which races with their clients' next request.
	draining.Store(true)
	notify("STOPPING=1")
	time.Sleep(lameDuck)
	// Then Go's graceful shutdown: stop accepting, close idle connections, let in-flight
	// requests finish (within a budget below the unit's TimeoutStopSec=, drain.budget).
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "shutdown:", err)
		os.Exit(1)
	}
}

func handle(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		// handoff: 200 while draining too: the health path speaks for the host, and the next
		// instance serves it; a balancer's check must never fail during a switch.
		reply(w, http.StatusOK, "ok\n")
	case "/":
		if s := r.URL.Query().Get("sleep_ms"); s != "" {
			ms, err := strconv.Atoi(s)
			if err != nil || ms < 0 {
				reply(w, http.StatusBadRequest, "sleep_ms: not a number\n")
				return
			}
			time.Sleep(time.Duration(min(ms, 600000)) * time.Millisecond)
		}
		reply(w, http.StatusOK, release+"\n")
	default:
		reply(w, http.StatusNotFound, "not found\n")
	}
}

func reply(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Release", release)
	h.Set("X-Instance", instance)
	// handoff: while draining, every response closes its connection (checked when the
	// response is written, so requests already running at SIGTERM get it too).
	if draining.Load() {
		h.Set("Connection", "close")
	}
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// listen returns the socket systemd passes: fd 3, announced by LISTEN_FDS (no silent fallback
// to binding). Behind the front (strategy: proxy) the hooks set PORT instead, and the same app
// listens on 127.0.0.1:$PORT.
func listen() (net.Listener, error) {
	if port := os.Getenv("PORT"); port != "" {
		return net.Listen("tcp", "127.0.0.1:"+port)
	}
	if os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("no LISTEN_FDS=1 for this process: run under systemd socket activation " +
			"(locally: systemd-socket-activate -l 127.0.0.1:8080 ./server)")
	}
	f := os.NewFile(3, "systemd socket")
	defer f.Close() // FileListener holds its own copy
	return net.FileListener(f)
}

// notify sends one sd_notify message to $NOTIFY_SOCKET (a no-op when it is unset).
func notify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sd_notify:", err)
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}
