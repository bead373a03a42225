package device_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/pylonhq/pylon/sdk/device"
	"github.com/pylonhq/pylon/senml"
)

// Enroll once, on first boot: the key is made on the device and never
// leaves dir.
func ExampleEnroll() {
	ctx := context.Background()
	dir := "/var/lib/sensor"
	if _, err := device.LoadIdentity(dir); errors.Is(err, device.ErrNotEnrolled) {
		caPEM, err := os.ReadFile("/etc/sensor/pylon-ca.crt") // flashed at manufacture
		if err != nil {
			log.Fatal(err)
		}
		id, err := device.Enroll(ctx, "https://pylon.example:8443", os.Getenv("PYLON_ENROLL_TOKEN"), caPEM, dir,
			device.WithCommonName("serial-0042"))
		if err != nil {
			log.Fatal(err) // e.g. "enrollment refused (HTTP 401): ..."
		}
		fmt.Println("enrolled as", id.DeviceID)
	}
}

// Publish returns once the platform has stored the reading; offline, it
// waits while the reading sits in the outbox (or returns at once with
// Options.NoWait).
func ExampleClient_Publish() {
	ctx := context.Background()
	c, err := device.Connect(ctx, "/var/lib/sensor", device.Options{
		Firmware: "1.4.2",
		OnError:  func(e device.PlatformError) { log.Printf("platform refused message %d: %s", e.Seq, e.Reason) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = c.Publish(ctx,
		senml.Record{Name: "temperature", Unit: "Cel", Value: device.Float(21.5)},
		senml.Record{Name: "humidity", Unit: "%RH", Value: device.Float(40)})
	if errors.Is(err, device.ErrQueueFull) {
		log.Print("outbox full: reading not taken")
	}
}
