package gateway

import (
	"reflect"
	"strings"

	"github.com/dpgate/dpgate/internal/config"
)

// changedKeys lists the configuration keys whose values differ between
// cur (what runs) and next (the file now), by their YAML names
// ("cluster.bind", "push.listen"); a reload applies the keys it can
// before comparing, so what is left needs a restart.
func changedKeys(cur, next *config.Config) []string {
	var out []string
	var walk func(path string, a, b reflect.Value)
	walk = func(path string, a, b reflect.Value) {
		if a.Kind() == reflect.Struct {
			for i := range a.NumField() {
				f := a.Type().Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if !f.IsExported() || name == "" || name == "-" {
					continue
				}
				walk(strings.TrimPrefix(path+"."+name, "."), a.Field(i), b.Field(i))
			}
			return
		}
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			out = append(out, path)
		}
	}
	walk("", reflect.ValueOf(*cur), reflect.ValueOf(*next))
	return out
}
