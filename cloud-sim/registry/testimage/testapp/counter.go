package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// COUNTER_EVERY=50ms makes the program, whatever its MODE, also print a
// numbered line to stdout at that interval, from 1:
//
//	count 000001
//	count 000002 xxxxxxxx…   (COUNTER_PAD=N adds N bytes of padding)
//
// so a test of the logs verb knows which lines exist and in what order.
// It starts in init so that no mode's code changes; "testapp probe" does
// not count.
func init() {
	every, err := time.ParseDuration(os.Getenv("COUNTER_EVERY"))
	if err != nil || every <= 0 || (len(os.Args) > 1 && os.Args[1] == "probe") {
		return
	}
	pad, _ := strconv.Atoi(os.Getenv("COUNTER_PAD"))
	go count(every, strings.Repeat("x", max(pad, 0)))
}

func count(every time.Duration, pad string) {
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 1; ; n++ {
		if pad == "" {
			fmt.Printf("count %06d\n", n)
		} else {
			fmt.Printf("count %06d %s\n", n, pad)
		}
		<-t.C
	}
}
