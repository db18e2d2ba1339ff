// Command counter is the program inside the image of the logs package's
// Docker tests. It prints $COUNT numbered lines at once ("line 0007"; with
// $ERR_EVERY=n every n-th to stderr), each padded to $SIZE bytes when set,
// then, with $INTERVAL, one more line ("tick 0000", …) every $INTERVAL
// until stopped.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	count, _ := strconv.Atoi(os.Getenv("COUNT"))
	size, _ := strconv.Atoi(os.Getenv("SIZE"))
	errEvery, _ := strconv.Atoi(os.Getenv("ERR_EVERY"))
	for i := range count {
		out := os.Stdout
		if errEvery > 0 && i%errEvery == errEvery-1 {
			out = os.Stderr
		}
		line := fmt.Sprintf("line %04d", i)
		if pad := size - len(line); pad > 0 {
			line += " " + strings.Repeat("x", pad-1)
		}
		fmt.Fprintln(out, line)
	}
	var tick <-chan time.Time
	if d, err := time.ParseDuration(os.Getenv("INTERVAL")); err == nil && d > 0 {
		t := time.NewTicker(d)
		defer t.Stop()
		tick = t.C
	}
	for n := 0; ; {
		select {
		case <-stop:
			return
		case <-tick:
			fmt.Printf("tick %04d\n", n)
			n++
		}
	}
}
