package ingest

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages          *prometheus.CounterVec
	readings          prometheus.Counter
	quarantineDropped prometheus.Counter
	latency           prometheus.Histogram
	commit            prometheus.Histogram
	batch             prometheus.Histogram
	verifyBatch       prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pylon_ingest_messages_total",
			Help: "Telemetry messages by result: stored, duplicate, refused, failed.",
		}, []string{"result"}),
		readings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pylon_ingest_readings_total", Help: "Readings stored.",
		}),
		quarantineDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pylon_ingest_quarantine_dropped_total", Help: "Refused messages not quarantined because the queue was full.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pylon_ingest_latency_seconds",
			Help:    "From receipt to durable commit, per stored message.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pylon_ingest_commit_seconds",
			Help:    "Duration of one group commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pylon_ingest_batch_messages",
			Help:    "Messages per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		verifyBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pylon_ingest_verify_batch_messages",
			Help:    "Messages a verifier took at once; the Ed25519 signatures among them are checked in one batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 7),
		}),
	}
	for _, r := range []string{"stored", "duplicate", "refused", "failed"} {
		m.messages.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.messages, m.readings, m.quarantineDropped, m.latency, m.commit, m.batch, m.verifyBatch)
	}
	return m
}
