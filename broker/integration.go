package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/pylonhq/pylon"
)

// defaultIntegrationRecheck is how often the API token of a connected
// integration is checked again unless Options.IntegrationRecheck says: as
// the dashboard's sessions (dashboard.TokenRecheckInterval).
const defaultIntegrationRecheck = time.Minute

// integrationToken is the API token an integration connected with: its ID
// and the hash of its secret, never the secret.
type integrationToken struct {
	id   string
	hash []byte
}

// integrationClients holds the token of each connected integration, so
// that a token revoked or expired since ends its sessions
// (recheckIntegrations).
type integrationClients struct{ m sync.Map } // *mqtt.Client → integrationToken

func (c *integrationClients) add(cl *mqtt.Client, tok integrationToken) { c.m.Store(cl, tok) }

// recheckIntegrations checks the token of every connected integration
// every period, until stop is closed, and ends the sessions of those no
// longer valid.
func (b *Broker) recheckIntegrations(period time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		b.integrations.m.Range(func(k, v any) bool {
			b.recheckIntegration(k.(*mqtt.Client), v.(integrationToken))
			return true
		})
	}
}

// recheckIntegration ends cl's session (MQTT 5: DISCONNECT 0x98) if its
// token is no longer valid, and forgets a client that has gone. A store
// that cannot answer leaves the session be, until the next check.
func (b *Broker) recheckIntegration(cl *mqtt.Client, tok integrationToken) {
	if cl.Closed() {
		b.integrations.m.Delete(cl)
		return
	}
	ctx, cancel := b.storeContext(pylon.SystemPrincipal)
	defer cancel()
	t, err := b.opts.APITokens.AuthenticateAPIToken(ctx, tok.id, tok.hash)
	switch {
	case err == nil && t.Role.Allows(pylon.PermRead):
		return
	case err != nil && pylon.ErrorCode(err) != pylon.EUNAUTHORIZED:
		b.log.Warn("recheck mqtt integration token", "token", tok.id, "client", cl.ID, "err", err)
		return
	}
	b.log.Info("mqtt integration session ended: its API token is no longer valid", "token", tok.id, "client", cl.ID)
	b.integrations.m.Delete(cl)
	closeClient(cl, true)
}
