// Command go is a Pylon device in a few dozen lines of Go, on the SDK in
// sdk/device: it enrolls on first run, then publishes a temperature every
// few seconds. Readings are queued on disk first, so nothing is lost while
// the network or the server is away; platform errors are printed.
//
//	go run ./examples/go --server https://localhost:8443 --ca pylon-data/ca.crt --token pyl_et_...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

func main() {
	server := flag.String("server", "https://localhost:8443", "Pylon server URL")
	caFile := flag.String("ca", "pylon-data/ca.crt", "the server's CA certificate")
	token := flag.String("token", os.Getenv("PYLON_ENROLL_TOKEN"), "enrollment token (first run only)")
	name := flag.String("name", "example-device", "device name, for a fleet token")
	dir := flag.String("dir", "device-data", "where the device keeps its key, certificate and queue")
	every := flag.Duration("every", 5*time.Second, "time between readings")
	n := flag.Int("n", 0, "readings to take before exiting (0: until interrupted)")
	mqttAddr := flag.String("mqtt-addr", "", "broker host:port (default: asked from the server)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if _, err := device.LoadIdentity(*dir); errors.Is(err, device.ErrNotEnrolled) {
		caPEM, err := os.ReadFile(*caFile)
		if err != nil {
			log.Fatal(err)
		}
		id, err := device.Enroll(ctx, *server, *token, caPEM, *dir, device.WithCommonName(*name))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("enrolled as device", id.DeviceID)
	}
	c, err := device.Connect(ctx, *dir, device.Options{
		MQTTAddr: *mqttAddr,
		NoWait:   true, // return once the reading is on disk; the SDK delivers it
		Firmware: "example-go/1.0",
		OnError: func(e device.PlatformError) {
			fmt.Printf("platform error: message %d: %s: %s\n", e.Seq, e.Code, e.Reason)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	temp := 21.0
	for i := 0; *n == 0 || i < *n; i++ {
		temp += 0.1*(21-temp) + 0.2*rand.NormFloat64()
		v := math.Round(temp*100) / 100
		if err := c.Publish(ctx, senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(v)}); err != nil {
			log.Printf("reading not queued: %v", err)
		} else {
			fmt.Printf("queued temperature %.2f Cel\n", v)
		}
		select {
		case <-time.After(*every):
		case <-ctx.Done():
			return
		}
	}
	// Wait (a while) until the platform has stored everything queued.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		log.Fatalf("not all readings delivered: %v (they stay queued in %s)", err, *dir)
	}
	fmt.Println("all readings delivered")
}
