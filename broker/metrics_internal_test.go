package broker

import (
	"log/slog"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// BenchmarkPacketReadHooks measures what counting received PUBLISH packets
// in metricsHook.OnPacketRead adds to every packet mochi reads: mochi's
// hook dispatch for a telemetry PUBLISH, without and with the hook.
func BenchmarkPacketReadHooks(b *testing.B) {
	m, err := newMetrics(nil, &system.Info{})
	if err != nil {
		b.Fatal(err)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "devices/cozv4nukag4bmlzh/telemetry",
		Payload:     make([]byte, 100),
		PacketID:    7,
	}
	cl := &mqtt.Client{}
	for _, bc := range []struct {
		name  string
		hooks []mqtt.Hook
	}{
		{"without", []mqtt.Hook{&telemetryHook{}}},
		{"with", []mqtt.Hook{&telemetryHook{}, &metricsHook{m: m}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := &mqtt.Hooks{Log: slog.New(slog.DiscardHandler)}
			for _, hook := range bc.hooks {
				if err := h.Add(hook, nil); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if _, err := h.OnPacketRead(cl, pk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
