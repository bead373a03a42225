package broker

import (
	"fmt"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon/ingest"
)

// metrics are the broker's Prometheus metrics. The connected clients and
// the messages sent are read from mochi's own counters (system.Info) when
// scraped.
type metrics struct {
	connections prometheus.Counter
	refused     *prometheus.CounterVec // by reason (see the reason constants)
	aclDenied   *prometheus.CounterVec // by op: publish, subscribe
	received    prometheus.Counter     // PUBLISH packets read from clients

	telemetryRefused     *prometheus.CounterVec // by code: invalid, unauthorized, too_large
	telemetryDisconnects prometheus.Counter     // devices dropped because their message could not be stored
}

// newMetrics creates the metrics and registers them with reg, if not nil.
func newMetrics(reg prometheus.Registerer, info *system.Info) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pylon_mqtt_connections_total",
			Help: "MQTT sessions established (devices and integrations).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pylon_mqtt_connect_refused_total",
			Help: "MQTT connections refused, by reason.",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pylon_mqtt_acl_denied_total",
			Help: "MQTT publishes and subscriptions denied by the topic ACL, by operation.",
		}, []string{"op"}),
		// Counted here, not read from mochi's MessagesReceived, which
		// also counts what the broker publishes itself through the inline
		// client (stored telemetry it routes, error reports).
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pylon_mqtt_messages_received_total",
			Help: "MQTT PUBLISH packets received from clients.",
		}),
	}
	m.telemetryRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pylon_mqtt_telemetry_refused_total",
		Help: "Telemetry messages refused and reported on the device's errors topic, by code.",
	}, []string{"code"})
	m.telemetryDisconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pylon_mqtt_telemetry_disconnects_total",
		Help: "Device connections closed, unacknowledged, because a telemetry message could not be stored.",
	})
	for _, c := range ingest.RefusalCodes {
		m.telemetryRefused.WithLabelValues(c)
	}
	m.aclDenied.WithLabelValues(opPublish)
	m.aclDenied.WithLabelValues(opSubscribe)
	if reg == nil {
		return m, nil
	}
	collectors := []prometheus.Collector{
		m.connections, m.refused, m.aclDenied, m.received, m.telemetryRefused, m.telemetryDisconnects,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pylon_mqtt_connected_clients",
			Help: "MQTT clients connected now.",
		}, func() float64 { return float64(atomic.LoadInt64(&info.ClientsConnected)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "pylon_mqtt_messages_sent_total",
			Help: "MQTT PUBLISH packets sent.",
		}, func() float64 { return float64(atomic.LoadInt64(&info.MessagesSent)) }),
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register broker metrics: %w", err)
		}
	}
	return m, nil
}

// metricsHook counts established sessions.
type metricsHook struct {
	mqtt.HookBase
	m *metrics
}

// ID implements mqtt.Hook.
func (h *metricsHook) ID() string { return "pylon-metrics" }

// Provides implements mqtt.Hook.
func (h *metricsHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnPacketRead
}

// OnSessionEstablished counts a session.
func (h *metricsHook) OnSessionEstablished(*mqtt.Client, packets.Packet) {
	h.m.connections.Inc()
}

// OnPacketRead counts a PUBLISH read from a client.
func (h *metricsHook) OnPacketRead(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish {
		h.m.received.Inc()
	}
	return pk, nil
}
