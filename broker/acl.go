package broker

import (
	"strings"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
)

// devicesPrefix is the root of every device's namespace, "devices/{id}/".
const devicesPrefix = "devices/"

// ACL operations: the values of the op label of pylon_mqtt_acl_denied_total.
const (
	opPublish   = "publish"
	opSubscribe = "subscribe"
)

// aclHook keeps each device inside "devices/{its id}/" and integrations
// to subscribing under "devices/".
//
// mochi calls OnACLCheck with write=true for every PUBLISH of a non-inline
// client, and with write=false both for each SUBSCRIBE filter and before
// delivering any message (retained ones included) to a subscriber. So a
// message outside a client's namespace never reaches it, even if a filter
// were to slip through. On a denial mochi drops the PUBLISH (QoS 0), answers
// PUBACK/PUBREC 0x87 (MQTT 5) or closes the connection (MQTT 3.1.1, which has
// no negative acknowledgement [MQTT-3.3.5-2]); a denied filter gets SUBACK
// 0x87 (MQTT 5) or 0x80 (MQTT 3.1.1). No other hook may provide OnACLCheck:
// mochi allows if any hook says yes.
type aclHook struct {
	mqtt.HookBase
	b *Broker
}

// ID implements mqtt.Hook.
func (h *aclHook) ID() string { return "pylon-acl" }

// Provides implements mqtt.Hook.
func (h *aclHook) Provides(b byte) bool {
	return b == mqtt.OnACLCheck || b == mqtt.OnSubscribe
}

// OnACLCheck allows or denies a topic. Publish denials are counted here;
// subscribe denials in OnSubscribe, because read checks also run for every
// delivery.
func (h *aclHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := allowed(cl, topic, write)
	if !ok && write {
		h.b.aclDenied(cl, opPublish, topic)
	}
	return ok
}

// OnSubscribe counts the filters OnACLCheck will deny and refuses filters
// beyond maxSubscriptions (by making them invalid: SUBACK 0x8F, or 0x80 for
// MQTT 3.1.1).
func (h *aclHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	held := cl.State.Subscriptions.Len()
	for i, sub := range pk.Filters {
		switch {
		case !mqtt.IsValidFilter(sub.Filter, false) || sub.NoLocal && mqtt.IsSharedFilter(sub.Filter):
			// mochi refuses it as malformed.
		case !allowed(cl, sub.Filter, false):
			h.b.aclDenied(cl, opSubscribe, sub.Filter)
		default:
			if _, ok := cl.State.Subscriptions.Get(sub.Filter); ok {
				continue
			}
			if held++; held > maxSubscriptions {
				h.b.log.Warn("mqtt subscription limit reached", "client", cl.ID, "limit", maxSubscriptions)
				pk.Filters[i].Filter = ""
			}
		}
	}
	return pk
}

// allowed reports whether cl may publish (write) to, or subscribe to or
// receive from, topic (a topic name or filter).
func allowed(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true // the platform itself
	}
	switch cl.Net.Listener {
	case listenerTLS:
		if write {
			return devicePublishAllowed(cl.ID, topic)
		}
		return deviceTopicAllowed(cl.ID, topic)
	case listenerIntegration, listenerPlain:
		return !write && topicBounded(topic) &&
			len(topic) > len(devicesPrefix) && strings.HasPrefix(topic, devicesPrefix)
	}
	return false
}

// deviceTopicAllowed reports whether topic lies under "devices/{id}/". As
// id is a device id ([a-z2-7]{16}, no wildcard), a filter with that prefix
// can match nothing outside the namespace.
func deviceTopicAllowed(id, topic string) bool {
	if !pylon.ValidID(id) || !topicBounded(topic) {
		return false
	}
	prefix := devicesPrefix + id + "/"
	return len(topic) > len(prefix) && strings.HasPrefix(topic, prefix)
}

// devicePublishAllowed reports whether device id may publish to topic: a
// topic of its namespace other than its errors topic (and what lies below
// it), which only the platform writes.
func devicePublishAllowed(id, topic string) bool {
	if !deviceTopicAllowed(id, topic) {
		return false
	}
	errs := ErrorsTopic(id)
	return topic != errs && !strings.HasPrefix(topic, errs+"/")
}

// topicBounded reports whether t is 1 to maxTopicLen bytes of UTF-8
// without NUL [MQTT-1.5.4-2].
func topicBounded(t string) bool {
	return t != "" && len(t) <= maxTopicLen && utf8.ValidString(t) && strings.IndexByte(t, 0) < 0
}

// aclDenied counts and audits one denial.
func (b *Broker) aclDenied(cl *mqtt.Client, op, topic string) {
	b.metrics.aclDenied.WithLabelValues(op).Inc()
	object, actor := "mqtt_client:"+truncate(cl.ID, maxClientIDLen), pylon.SystemPrincipal
	if cl.Net.Listener == listenerTLS {
		object, actor = "device:"+cl.ID, devicePrincipal(cl.ID)
	}
	b.log.Debug("mqtt acl denied", "client", cl.ID, "op", op, "topic", truncate(topic, maxTopicLen))
	b.audit.add(pylon.ActionACLDenied, object, actor, op, truncate(topic, maxTopicLen))
}
