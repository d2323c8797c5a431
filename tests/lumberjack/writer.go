// Writes audit events through the real gopkg.in/natefinch/lumberjack.v2,
// configured as kube-apiserver configures its audit log
// (--audit-log-maxsize/-maxbackup/-maxage/-compress, UTC backup names):
// one Write per event, as its log backend does.
//
// Built by tests/lumberjack.rs in GOPATH mode against Debian's
// golang-gopkg-natefinch-lumberjack.v2-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o writer writer.go
//
// Usage: writer -path P -maxsize MB -maxbackup N -compress -rate R -count N
// -start S. Event i carries auditID "lj-<S+i>". With -bursts, the rate
// alternates: a second at -rate, a second idle. On SIGTERM or at the end it
// closes the logger and waits -settle for lumberjack's background mill
// (compression, removal) to finish, as a long-running apiserver's would.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

func main() {
	path := flag.String("path", "", "audit log path")
	maxSize := flag.Int("maxsize", 1, "MaxSize in MB")
	maxBackups := flag.Int("maxbackup", 0, "MaxBackups (0: keep all)")
	maxAge := flag.Int("maxage", 0, "MaxAge in days (0: keep)")
	compress := flag.Bool("compress", false, "Compress rotated files")
	rate := flag.Int("rate", 5000, "events per second (0: as fast as possible)")
	count := flag.Int("count", 10000, "events to write")
	start := flag.Int("start", 0, "sequence number of the first event")
	size := flag.Int("size", 1000, "approximate bytes per event")
	bursts := flag.Bool("bursts", false, "alternate a second at -rate and a second idle")
	settle := flag.Duration("settle", 2*time.Second, "wait for the mill before exiting")
	flag.Parse()

	l := &lumberjack.Logger{
		Filename:   *path,
		MaxSize:    *maxSize,
		MaxBackups: *maxBackups,
		MaxAge:     *maxAge,
		Compress:   *compress,
		LocalTime:  false,
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	padLen := *size - 520
	if padLen < 1 {
		padLen = 1
	}
	pad := strings.Repeat("x", padLen)
	begin := time.Now()
	written := 0
	for i := 0; i < *count; i++ {
		select {
		case <-stop:
			i = *count
			continue
		default:
		}
		if *rate > 0 && i%50 == 0 {
			// Pace in steps of 50 events.
			at := time.Duration(i) * time.Second / time.Duration(*rate)
			if *bursts {
				// Second k of writing is wall second 2k.
				at += (at / time.Second) * time.Second
			}
			if d := time.Until(begin.Add(at)); d > 0 {
				time.Sleep(d)
			}
		}
		now := time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
		line := fmt.Sprintf(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"lj-%d","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/configmaps?limit=500","verb":"list","user":{"username":"system:serviceaccount:kube-system:lumberjack-writer","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"lumberjack-writer/v2","objectRef":{"resource":"configmaps","namespace":"default","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"%s","stageTimestamp":"%s","annotations":{"authorization.k8s.io/decision":"allow","pad":"%s"}}`+"\n",
			*start+i, now, now, pad)
		if _, err := l.Write([]byte(line)); err != nil {
			fmt.Fprintln(os.Stderr, "write:", err)
			os.Exit(1)
		}
		written++
	}
	l.Close()
	time.Sleep(*settle)
	fmt.Println(written)
}
