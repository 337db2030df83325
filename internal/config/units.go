package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("10s", "1m30s").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (use Go syntax such as 10s, 500ms, 1h30m)", b)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Percent is a ratio written as "10%" or as a plain number of percent ("10", "2.5").
// It is stored as a fraction: 10 % is 0.10.
type Percent float64

func (p *Percent) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(string(b)), "%"))
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("%q is not a percentage (write it as 10%% or 2.5%%)", b)
	}
	if v < 0 || v > 100 {
		return fmt.Errorf("%q is outside 0%%..100%%", b)
	}
	*p = Percent(v / 100)
	return nil
}

func (p Percent) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(p)*100, 'g', -1, 64) + "%"), nil
}

// Rate is a bit rate written with an SI unit: "1Gbit", "250Mbit", "64kbit",
// or "0"/"off" for unlimited. It is stored in bits per second.
type Rate uint64

var rateUnits = []struct {
	suffix, name string
	mult         float64
}{
	{"gbit", "Gbit", 1e9}, {"mbit", "Mbit", 1e6}, {"kbit", "kbit", 1e3}, {"bit", "bit", 1},
}

func (r *Rate) UnmarshalText(b []byte) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	if s == "" || s == "0" || s == "off" {
		*r = 0
		return nil
	}
	for _, u := range rateUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v <= 0 {
				break
			}
			*r = Rate(v * u.mult)
			return nil
		}
	}
	return fmt.Errorf("%q is not a bit rate (write it as 1Gbit, 250Mbit, 64kbit or off)", b)
}

func (r Rate) MarshalText() ([]byte, error) {
	if r == 0 {
		return []byte("off"), nil
	}
	for _, u := range rateUnits {
		if float64(r) >= u.mult {
			return []byte(strconv.FormatFloat(float64(r)/u.mult, 'g', -1, 64) + u.name), nil
		}
	}
	return []byte("off"), nil
}

// Size is a byte count written as "4KiB", "1MiB", "512" (bytes) or "64KB".
type Size uint64

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1}, {"", 1},
}

func (z *Size) UnmarshalText(b []byte) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
			if err != nil {
				break
			}
			*z = Size(v * u.mult)
			return nil
		}
	}
	return fmt.Errorf("%q is not a size (write it as 4KiB, 1MiB or a number of bytes)", b)
}

func (z Size) MarshalText() ([]byte, error) {
	for _, u := range sizeUnits[:3] {
		if z >= Size(u.mult) && uint64(z)%u.mult == 0 {
			return []byte(strconv.FormatUint(uint64(z)/u.mult, 10) + strings.ToUpper(u.suffix[:1]) + "iB"), nil
		}
	}
	return []byte(strconv.FormatUint(uint64(z), 10)), nil
}
