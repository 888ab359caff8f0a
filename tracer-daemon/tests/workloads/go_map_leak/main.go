// A Go service that leaks into a global map: after "go", leakIntoMap keeps a 256 KiB buffer
// (every page written) every 50 ms, forever; "count" prints "leaked N", the bytes kept so far.
// It speaks the C workloads' protocol (ready, go, started, count, exit).
package main

import (
	"bufio"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

const leakBytes = 256 << 10

var (
	cache  = map[int][]byte{}
	leaked int64
)

//go:noinline
func leakIntoMap(i int) {
	buffer := make([]byte, leakBytes)
	for j := range buffer {
		buffer[j] = byte(i)
	}
	cache[i] = buffer
	atomic.AddInt64(&leaked, leakBytes)
}

func main() {
	fmt.Printf("ready %d\n", os.Getpid())
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() && lines.Text() != "go" {
	}
	go func() {
		for i := 0; ; i++ {
			leakIntoMap(i)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	fmt.Printf("started %d\n", os.Getpid())
	for lines.Scan() {
		switch lines.Text() {
		case "count":
			fmt.Printf("leaked %d\n", atomic.LoadInt64(&leaked))
		case "exit":
			return
		}
	}
}
