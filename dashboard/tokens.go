package dashboard

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// maxTokensShown bounds the enrollment token list.
const maxTokensShown = 500

// Enrollment token statuses as the dashboard shows them.
const (
	tokenLive    = "live"
	tokenUsed    = "used"
	tokenExpired = "expired"
	tokenRevoked = "revoked"
)

// tokenStatus returns the status of t at now.
func tokenStatus(t *pylon.EnrollmentToken, now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return tokenRevoked
	case t.Used >= t.Uses:
		return tokenUsed
	case !now.Before(t.ExpiresAt):
		return tokenExpired
	}
	return tokenLive
}

type tokenRow struct {
	*pylon.EnrollmentToken
	Status string
}

// tokenForm is the create form as the user filled it in.
type tokenForm struct {
	DeviceID, Labels, Uses, TTL string
}

type tokensData struct {
	Live      bool // only live tokens
	Tokens    []tokenRow
	Truncated bool
	Form      tokenForm
}

// handleTokens lists enrollment tokens and shows the create form.
func (s *Server) handleTokens(w http.ResponseWriter, r *http.Request, u *user) {
	v := s.newView(u, "tokens", "Enrollment tokens", nil)
	if r.URL.Query().Get("done") == "revoked" {
		v.Notice = "Enrollment token revoked."
	}
	s.showTokens(w, r, v, http.StatusOK, r.URL.Query().Get("live") == "1", tokenForm{})
}

func (s *Server) showTokens(w http.ResponseWriter, r *http.Request, v *view, status int, live bool, form tokenForm) {
	tokens, err := s.EnrollTokens.FindEnrollmentTokens(r.Context(), live)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := &tokensData{Live: live, Form: form}
	if len(tokens) > maxTokensShown {
		tokens, d.Truncated = tokens[:maxTokensShown], true
	}
	now := s.now()
	for _, t := range tokens {
		d.Tokens = append(d.Tokens, tokenRow{EnrollmentToken: t, Status: tokenStatus(t, now)})
	}
	v.Data = d
	s.render(w, r, status, "tokens", v)
}

// token validates the form and returns the token it describes, without ID.
// Returns EINVALID.
func (f tokenForm) token(now time.Time) (*pylon.EnrollmentToken, error) {
	ttl, err := parseTTL(f.TTL)
	if err != nil {
		return nil, err
	}
	t := &pylon.EnrollmentToken{DeviceID: f.DeviceID, Uses: 1, ExpiresAt: now.Add(ttl), CreatedAt: now}
	if f.DeviceID != "" {
		if !pylon.ValidID(f.DeviceID) {
			return nil, pylon.Errorf(pylon.EINVALID, "device id: not a device id")
		} else if strings.TrimSpace(f.Labels) != "" {
			return nil, pylon.Errorf(pylon.EINVALID, "labels: not allowed with a device id (the device has its own)")
		} else if f.Uses != "" && f.Uses != "1" {
			return nil, pylon.Errorf(pylon.EINVALID, "uses: a device token has exactly one use")
		}
		return t, nil
	}
	if t.Labels, err = parseLabels(f.Labels); err != nil {
		return nil, err
	}
	if f.Uses != "" {
		n, err := strconv.Atoi(f.Uses)
		if err != nil || n < 1 || n > pylon.MaxEnrollmentUses {
			return nil, pylon.Errorf(pylon.EINVALID, "uses: must be from 1 to %d", pylon.MaxEnrollmentUses)
		}
		t.Uses = n
	}
	return t, nil
}

// parseLabels reads "key=value" pairs separated by commas or new lines.
// Returns EINVALID.
func parseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for _, pair := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, pylon.Errorf(pylon.EINVALID, "labels: use key=value, separated by commas")
		}
		labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
		if len(labels) > pylon.MaxLabels {
			break // ValidateLabels says so
		}
	}
	if err := pylon.ValidateLabels(labels); err != nil {
		return nil, err
	}
	return labels, nil
}

// parseTTL reads a lifetime such as "24h", "90m" or "7d"; empty means
// pylon.DefaultEnrollmentTTL. Returns EINVALID.
func parseTTL(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return pylon.DefaultEnrollmentTTL, nil
	}
	bad := pylon.Errorf(pylon.EINVALID, "ttl: use a duration such as 90m, 24h or 7d, at most %d days", int(pylon.MaxEnrollmentTTL.Hours()/24))
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > int(pylon.MaxEnrollmentTTL.Hours()/24) {
			return 0, bad
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, bad
		}
	}
	if d <= 0 || d > pylon.MaxEnrollmentTTL {
		return 0, bad
	}
	return d, nil
}

// createdData is the data of the page that shows a new token, once.
type createdData struct {
	Token    *pylon.EnrollmentToken
	Secret   string
	Device   *pylon.Device // for a device token
	Sim      string        // pylon sim: simulated devices that enroll with the token and publish
	Script   string        // examples/shell/enroll.sh command
	Commands string        // the same with openssl and curl
	CAURL    string
}

// handleCreateToken creates an enrollment token and shows it, once, in the
// response to the POST. The secret is stored nowhere but in that page.
func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request, u *user) {
	form := tokenForm{
		DeviceID: strings.TrimSpace(r.PostForm.Get("device_id")),
		Labels:   r.PostForm.Get("labels"),
		Uses:     strings.TrimSpace(r.PostForm.Get("uses")),
		TTL:      strings.TrimSpace(r.PostForm.Get("ttl")),
	}
	now := s.now()
	ctx := r.Context()
	t, err := form.token(now)
	var dev *pylon.Device
	if err == nil && t.DeviceID != "" {
		dev, err = s.Devices.FindDeviceByID(ctx, t.DeviceID)
	}
	var secret string
	if err == nil {
		var hash []byte
		secret, t.ID, hash = pylon.NewSecret(pylon.EnrollmentTokenPrefix)
		t.CreatedBy = u.Actor
		err = s.EnrollTokens.CreateEnrollmentToken(ctx, t, hash)
	}
	if err != nil {
		v := s.newView(u, "tokens", "Enrollment tokens", nil)
		v.Error = s.userMessage(r, err)
		status := statusOf[pylon.ErrorCode(err)]
		if status == 0 {
			status = http.StatusInternalServerError
		}
		s.showTokens(w, r, v, status, false, form)
		return
	}
	s.log.Info("created enrollment token", "token_id", t.ID, "device", t.DeviceID, "uses", t.Uses, "by", u.Actor)
	server := s.serverURL(r)
	cn := "serial-0042"
	if dev != nil {
		cn = dev.ID
	}
	script, commands := enrollCommands(server, secret, cn, dev == nil)
	d := createdData{
		Token: t, Secret: secret, Device: dev, Sim: simCommand(server, secret, min(t.Uses, maxSimShown)),
		Script: script, Commands: commands, CAURL: server + "/api/v1/ca/cert",
	}
	s.render(w, r, http.StatusCreated, "token_created", s.newView(u, "tokens", "Enrollment token created", d))
}

// enrollCommands returns the commands that enroll a device with token:
// with examples/shell/enroll.sh, and with openssl and curl alone. They
// follow docs/protocol.md §2 (a test keeps them in step).
func enrollCommands(server, token, cn string, fleet bool) (script, commands string) {
	script = "examples/shell/enroll.sh " + server + " ca.crt " + token + " dev"
	if fleet {
		script += " " + cn
	}
	commands = strings.Join([]string{
		`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out device.key`,
		`openssl req -new -key device.key -subj "/CN=` + cn + `" -outform DER | base64 > device.csr.b64`,
		`curl --fail-with-body --cacert ca.crt \`,
		`  -H "Authorization: Bearer ` + token + `" -H "Content-Type: application/pkcs10" \`,
		`  --data-binary @device.csr.b64 \`,
		`  ` + server + `/.well-known/est/simpleenroll \`,
		`  | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out device.crt`,
	}, "\n")
	return script, commands
}

// maxSimShown is the most simulated devices the command on the created
// page starts, whatever the token's uses.
const maxSimShown = 10

// simCommand returns the pylon sim command that enrolls n simulated devices
// with token and has them publish readings until interrupted.
func simCommand(server, token string, n int) string {
	return "pylon sim --server " + server + " --ca ca.crt --enroll-token " + token +
		" --devices " + strconv.Itoa(n) + " --duration 0"
}

// handleRevokeToken revokes an enrollment token.
func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request, u *user) {
	id := r.PathValue("id")
	if !pylon.ValidID(id) {
		s.renderError(w, r, http.StatusNotFound, "There is no such enrollment token.")
		return
	}
	if err := s.EnrollTokens.RevokeEnrollmentToken(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("revoked enrollment token", "token_id", id, "by", u.Actor)
	redirect(w, r, "/tokens?done=revoked")
}
