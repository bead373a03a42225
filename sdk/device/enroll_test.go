package device_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sdk/device"
)

func TestEnroll_StoresIdentity(t *testing.T) {
	ca := newFakeCA(t)
	srv := newFakeEST(t, ca)
	for _, kt := range []device.KeyType{device.KeyP256, device.KeyEd25519} {
		t.Run(string(kt), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dev")
			id, err := device.Enroll(context.Background(), srv.URL, "good", ca.pem, dir, device.WithKeyType(kt), device.WithCommonName("serial-1"))
			if err != nil {
				t.Fatal(err)
			}
			if id.DeviceID != testDeviceID || id.ServerURL != srv.URL || id.Certificate == nil {
				t.Fatalf("identity: got %+v", id)
			}
			switch id.Certificate.PublicKey.(type) {
			case *ecdsa.PublicKey:
				if kt != device.KeyP256 {
					t.Errorf("got an ECDSA key, want %s", kt)
				}
			case ed25519.PublicKey:
				if kt != device.KeyEd25519 {
					t.Errorf("got an Ed25519 key, want %s", kt)
				}
			}
			for name, want := range map[string]os.FileMode{".": 0o700, "device.key": 0o600, "device.crt": 0o644, "ca.crt": 0o644, "device.id": 0o644, "server.url": 0o644} {
				fi, err := os.Stat(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("%s: got mode %o, want %o", name, got, want)
				}
			}
			key, _ := os.ReadFile(filepath.Join(dir, "device.key"))
			if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----") {
				t.Errorf("device.key: got %.30q, want PKCS#8 PEM", key)
			}
			loaded, err := device.LoadIdentity(dir)
			if err != nil || loaded.DeviceID != testDeviceID || !loaded.Certificate.Equal(id.Certificate) {
				t.Fatalf("load: got %+v %v", loaded, err)
			}
			// The key is the device's: a second enrollment does not overwrite it.
			_, err = device.Enroll(context.Background(), srv.URL, "good", ca.pem, dir)
			if pylon.ErrorCode(err) != pylon.ECONFLICT {
				t.Fatalf("enroll again: got %v, want ECONFLICT", err)
			}
		})
	}
}

func TestEnroll_Errors(t *testing.T) {
	ca := newFakeCA(t)
	srv := newFakeEST(t, ca)
	other := newFakeCA(t)
	tests := []struct {
		name, url, token string
		caPEM            []byte
		code, msg        string
	}{
		{"used token", srv.URL, "used", ca.pem, pylon.EUNAUTHORIZED, "used-up enrollment token"},
		{"suspended device", srv.URL, "suspended", ca.pem, pylon.EFORBIDDEN, "suspended"},
		{"name taken", srv.URL, "taken", ca.pem, pylon.ECONFLICT, "exists"},
		{"plain http", strings.Replace(srv.URL, "https", "http", 1), "good", ca.pem, pylon.EINVALID, "https"},
		{"no token", srv.URL, "", ca.pem, pylon.EINVALID, "token"},
		{"no CA", srv.URL, "good", []byte("nothing"), pylon.EINVALID, "CA"},
		{"another CA pinned", srv.URL, "good", other.pem, pylon.EINTERNAL, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dev")
			_, err := device.Enroll(context.Background(), tt.url, tt.token, tt.caPEM, dir)
			if err == nil {
				t.Fatal("got no error")
			}
			if got := pylon.ErrorCode(err); got != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %q %v, want code %q mentioning %q", got, err, tt.code, tt.msg)
			}
			if _, err := device.LoadIdentity(dir); !errors.Is(err, device.ErrNotEnrolled) {
				t.Fatalf("after a failed enrollment: got %v, want ErrNotEnrolled", err)
			}
		})
	}
}

func TestLoadIdentity_FinishesInterruptedRenewal(t *testing.T) {
	ca := newFakeCA(t)
	srv := newFakeEST(t, ca)
	src := filepath.Join(t.TempDir(), "src")
	if _, err := device.Enroll(context.Background(), srv.URL, "good", ca.pem, src); err != nil {
		t.Fatal(err)
	}
	// A second identity's key and certificate play the renewed pair.
	next := filepath.Join(t.TempDir(), "next")
	renewed, err := device.Enroll(context.Background(), srv.URL, "good", ca.pem, next)
	if err != nil {
		t.Fatal(err)
	}
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string]struct {
		files   map[string][]byte // written into a copy of src
		renewed bool
	}{
		"crash before the renames":  {map[string][]byte{"device.key.new": read(next, "device.key"), "device.crt.new": read(next, "device.crt")}, true},
		"crash between the renames": {map[string][]byte{"device.key": read(next, "device.key"), "device.crt.new": read(next, "device.crt")}, true},
		"crash while writing":       {map[string][]byte{"device.key.new": read(next, "device.key")}, false},
		"certificate without key":   {map[string][]byte{"device.crt.new": read(next, "device.crt")}, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dev")
			os.MkdirAll(dir, 0o700)
			for _, f := range []string{"device.key", "device.crt", "ca.crt", "device.id", "server.url"} {
				os.WriteFile(filepath.Join(dir, f), read(src, f), 0o600)
			}
			for f, b := range tc.files {
				os.WriteFile(filepath.Join(dir, f), b, 0o600)
			}
			id, err := device.LoadIdentity(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := id.Certificate.Equal(renewed.Certificate); got != tc.renewed {
				t.Fatalf("renewed certificate in use: got %v, want %v", got, tc.renewed)
			}
			for _, f := range []string{"device.key.new", "device.crt.new"} {
				if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
					t.Errorf("%s left behind", f)
				}
			}
		})
	}
}
