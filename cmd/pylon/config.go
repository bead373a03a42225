package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the configuration of `pylon serve`. Defaults come from
// DefaultConfig, then an optional JSON file (--config), then PYLON_*
// environment variables, then flags: each later source overrides the
// earlier ones.
type Config struct {
	Data          string   `json:"data"`                  // data directory (CA, store, admin token)
	APIAddr       string   `json:"api_addr"`              // HTTPS API, EST and dashboard
	MQTTAddr      string   `json:"mqtt_addr"`             // MQTT over mutual TLS
	MQTTPlainAddr string   `json:"mqtt_plain_addr"`       // optional plain-TCP MQTT (API-token clients only)
	MQTTIntegAddr string   `json:"mqtt_integration_addr"` // optional MQTT over TLS for API-token clients (no client certificate)
	PublicMQTT    string   `json:"public_mqtt_addr"`
	Hostnames     []string `json:"hostnames"` // extra DNS names or IPs for the server certificate
	LogLevel      string   `json:"log_level"` // debug, info, warn, error
	LogFormat     string   `json:"log_format"`
	CertLifetime  Duration `json:"cert_lifetime"` // device certificate lifetime
	DebugAddr     string   `json:"debug_addr"`    // optional pprof listener, loopback only
	Retention     Duration `json:"retention"`     // how long readings are kept; 0 = forever
}

// Duration is a time.Duration that reads "30d", "720h" or "90m" from JSON
// and flags.
type Duration time.Duration

// ParseDuration is time.ParseDuration plus whole days ("30d", 24h each)
// and years ("5y", 365 days each).
func ParseDuration(s string) (time.Duration, error) {
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"d", 24 * time.Hour}, {"y", 365 * 24 * time.Hour}} {
		n, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 || strconv.Itoa(v) != n || v > int(math.MaxInt64/u.unit) {
			return 0, fmt.Errorf("invalid duration %q: want a whole number of days or years (30d, 5y), or a Go duration (720h)", s)
		}
		return time.Duration(v) * u.unit, nil
	}
	return time.ParseDuration(s)
}

// String implements flag.Value.
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := ParseDuration(s)
	*d = Duration(v)
	return err
}

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"720h\" or \"30d\"")
	}
	return d.Set(s)
}

// MarshalJSON writes a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// DefaultConfig returns the zero-configuration defaults.
func DefaultConfig() Config {
	return Config{
		Data:         "./pylon-data",
		APIAddr:      ":8443",
		MQTTAddr:     ":8883",
		LogLevel:     "info",
		LogFormat:    "text",
		CertLifetime: Duration(30 * 24 * time.Hour),
		Retention:    Duration(DefaultRetention),
	}
}

// DefaultRetention is how long readings are kept unless configured.
const DefaultRetention = 90 * 24 * time.Hour

// minRetention is the shortest retention other than 0 (forever): readings
// are deleted once an hour.
const minRetention = time.Hour

// Validate checks the configuration, naming the first bad setting.
func (c *Config) Validate() error {
	switch {
	case c.Data == "":
		return errors.New("data: required")
	case !validAddr(c.APIAddr):
		return fmt.Errorf("api-addr: %q is not host:port", c.APIAddr)
	case !validAddr(c.MQTTAddr):
		return fmt.Errorf("mqtt-addr: %q is not host:port", c.MQTTAddr)
	case c.MQTTPlainAddr != "" && !validAddr(c.MQTTPlainAddr):
		return fmt.Errorf("mqtt-plain-addr: %q is not host:port", c.MQTTPlainAddr)
	case c.MQTTIntegAddr != "" && !validAddr(c.MQTTIntegAddr):
		return fmt.Errorf("mqtt-integration-addr: %q is not host:port", c.MQTTIntegAddr)
	case c.PublicMQTT != "" && !validAddr(c.PublicMQTT):
		return fmt.Errorf("public-mqtt-addr: %q is not host:port", c.PublicMQTT)
	case c.DebugAddr != "" && !loopbackAddr(c.DebugAddr):
		return fmt.Errorf("debug-addr: %q must be a loopback address such as 127.0.0.1:6060", c.DebugAddr)
	case c.LogFormat != "text" && c.LogFormat != "json":
		return fmt.Errorf("log-format: %q is not text or json", c.LogFormat)
	case time.Duration(c.CertLifetime) < time.Hour || time.Duration(c.CertLifetime) > 5*365*24*time.Hour:
		return fmt.Errorf("cert-lifetime: %s is not between 1h and 5 years", time.Duration(c.CertLifetime))
	case c.Retention != 0 && time.Duration(c.Retention) < minRetention:
		return fmt.Errorf("retention: %s is neither 0 (keep forever) nor at least 1h", time.Duration(c.Retention))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	if err := distinctListeners(c.listeners()); err != nil {
		return err
	}
	for _, h := range c.Hostnames {
		if h == "" || len(h) > 253 || strings.ContainsAny(h, " /:,") && net.ParseIP(h) == nil {
			return fmt.Errorf("hostname: %q is not a DNS name or IP address", h)
		}
	}
	return nil
}

// validAddr reports whether s is host:port with a port net.Listen takes:
// a number up to 65535 or a service name.
func validAddr(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return false
	}
	_, err = net.LookupPort("tcp", port)
	return err == nil
}

// listener is an address the server listens on, and its setting.
type listener struct{ setting, addr string }

// listeners returns the addresses the server would listen on.
func (c *Config) listeners() []listener {
	ls := []listener{{"api-addr", c.APIAddr}, {"mqtt-addr", c.MQTTAddr}}
	if c.MQTTIntegAddr != "" {
		ls = append(ls, listener{"mqtt-integration-addr", c.MQTTIntegAddr})
	}
	if c.MQTTPlainAddr != "" {
		ls = append(ls, listener{"mqtt-plain-addr", c.MQTTPlainAddr})
	}
	if c.DebugAddr != "" {
		ls = append(ls, listener{"debug-addr", c.DebugAddr})
	}
	return ls
}

// distinctListeners returns an error if two of ls would take the same
// port: the same port number (not 0, which picks a free one) on the same
// host, or on any host where either listens on all addresses.
func distinctListeners(ls []listener) error {
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			ah, ap, _ := net.SplitHostPort(a.addr)
			bh, bp, _ := net.SplitHostPort(b.addr)
			apn, _ := net.LookupPort("tcp", ap)
			bpn, _ := net.LookupPort("tcp", bp)
			if apn == 0 || apn != bpn {
				continue
			}
			if sameHost(ah, bh) {
				return fmt.Errorf("%s and %s: both listen on %s and %s, the same port", a.setting, b.setting, a.addr, b.addr)
			}
		}
	}
	return nil
}

// sameHost reports whether listeners on hosts a and b can take the same
// address: one of them takes every address, or they name one (127.0.0.1,
// ::ffff:127.0.0.1 and localhost are all loopback).
func sameHost(a, b string) bool {
	as, bs := hostAddrs(a), hostAddrs(b)
	if as == nil || bs == nil {
		return true // every address
	}
	for _, x := range as {
		for _, y := range bs {
			if x == y {
				return true
			}
		}
	}
	return false
}

// hostAddrs returns the addresses a listener on host takes, nil for all
// of them; a name other than localhost stands for itself.
func hostAddrs(host string) []string {
	if host == "" {
		return nil
	}
	if strings.EqualFold(host, "localhost") {
		return []string{"127.0.0.1", "::1"}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return []string{strings.ToLower(host)}
	}
	if ip.IsUnspecified() {
		return nil
	}
	return []string{ip.Unmap().WithZone("").String()}
}

func loopbackAddr(s string) bool {
	host, _, err := net.SplitHostPort(s)
	ip := net.ParseIP(host)
	return err == nil && (host == "localhost" || ip != nil && ip.IsLoopback())
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// loadConfig builds the configuration from defaults, file, environment and
// args. It returns flag.ErrHelp for -h.
func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (cfg Config, check bool, err error) {
	fs := flag.NewFlagSet("pylon serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		file      = fs.String("config", getenv("PYLON_CONFIG"), "optional JSON configuration `file` ($PYLON_CONFIG)")
		data      = fs.String("data", "", "data `dir`ectory ($PYLON_DATA, default ./pylon-data)")
		apiAddr   = fs.String("api-addr", "", "HTTPS API `address` ($PYLON_API_ADDR, default :8443)")
		mqttAddr  = fs.String("mqtt-addr", "", "MQTT over mutual TLS `address` ($PYLON_MQTT_ADDR, default :8883)")
		integAddr = fs.String("mqtt-integration-addr", "", "MQTT over TLS `address` for API-token integrations, no client certificate ($PYLON_MQTT_INTEGRATION_ADDR, default none)")
		plainAddr = fs.String("mqtt-plain-addr", "", "INSECURE plain-TCP MQTT `address` for API-token integrations ($PYLON_MQTT_PLAIN_ADDR, default none)")
		public    = fs.String("public-mqtt-addr", "", "broker `host:port` announced to devices ($PYLON_PUBLIC_MQTT_ADDR)")
		debugAddr = fs.String("debug-addr", "", "serve Go pprof profiles on this loopback `address` ($PYLON_DEBUG_ADDR)")
		level     = fs.String("log-level", "", "log `level`: debug, info, warn, error ($PYLON_LOG_LEVEL)")
		format    = fs.String("log-format", "", "log `format`: text or json ($PYLON_LOG_FORMAT)")
		lifetime  Duration
		retention Duration
		hosts     stringList
	)
	fs.Var(&lifetime, "cert-lifetime", "device certificate `lifetime`, e.g. 30d ($PYLON_CERT_LIFETIME)")
	fs.Var(&retention, "retention", "keep readings this `long`, e.g. 90d; 0 keeps them forever ($PYLON_RETENTION, default 90d)")
	fs.Var(&hosts, "hostname", "extra DNS `name` or IP for the server certificate (repeatable; $PYLON_HOSTNAME, comma-separated)")
	fs.BoolVar(&check, "check-config", false, "validate the configuration and exit")
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	} else if fs.NArg() > 0 {
		return cfg, false, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	cfg = DefaultConfig()
	if *file != "" {
		if err := readConfigFile(*file, &cfg); err != nil {
			return cfg, false, err
		}
	}
	set := func(dst *string, env, flagVal string) {
		if v := getenv(env); v != "" {
			*dst = v
		}
		if flagVal != "" {
			*dst = flagVal
		}
	}
	set(&cfg.Data, "PYLON_DATA", *data)
	set(&cfg.APIAddr, "PYLON_API_ADDR", *apiAddr)
	set(&cfg.MQTTAddr, "PYLON_MQTT_ADDR", *mqttAddr)
	set(&cfg.MQTTPlainAddr, "PYLON_MQTT_PLAIN_ADDR", *plainAddr)
	set(&cfg.MQTTIntegAddr, "PYLON_MQTT_INTEGRATION_ADDR", *integAddr)
	set(&cfg.PublicMQTT, "PYLON_PUBLIC_MQTT_ADDR", *public)
	set(&cfg.DebugAddr, "PYLON_DEBUG_ADDR", *debugAddr)
	set(&cfg.LogLevel, "PYLON_LOG_LEVEL", *level)
	set(&cfg.LogFormat, "PYLON_LOG_FORMAT", *format)
	if v := getenv("PYLON_HOSTNAME"); v != "" {
		cfg.Hostnames = append(cfg.Hostnames, strings.Split(v, ",")...)
	}
	cfg.Hostnames = append(cfg.Hostnames, hosts...)
	if v := getenv("PYLON_CERT_LIFETIME"); v != "" {
		if err := cfg.CertLifetime.Set(v); err != nil {
			return cfg, false, fmt.Errorf("PYLON_CERT_LIFETIME: %w", err)
		}
	}
	if lifetime != 0 {
		cfg.CertLifetime = lifetime
	}
	if v := getenv("PYLON_RETENTION"); v != "" {
		if err := cfg.Retention.Set(v); err != nil {
			return cfg, false, fmt.Errorf("PYLON_RETENTION: %w", err)
		}
	}
	fs.Visit(func(f *flag.Flag) { // "--retention 0" is a setting, not an absence
		if f.Name == "retention" {
			cfg.Retention = retention
		}
	})
	return cfg, check, cfg.Validate()
}

func readConfigFile(name string, cfg *Config) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("config %s: %w", name, err)
	}
	return nil
}
