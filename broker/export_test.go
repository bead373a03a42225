package broker

// KeysHeld returns how many device connections have a certificate key
// stored, for tests that check it is cleaned up.
func KeysHeld(b *Broker) int {
	n := 0
	b.conns.m.Range(func(_, _ any) bool { n++; return true })
	return n
}

// ReceiveMaximum is how many telemetry messages of one connection the
// broker holds unanswered.
const ReceiveMaximum = receiveMaximum
