package gateway

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/wake"
)

// TestAPIRepliesReadBack: the replies the CLI and other clients decode
// (dpgate status, members, device list and show, push, store check, wake) read back as written,
// every field set. Before, link figures went out in milliseconds under
// other names and came back as 0 ("dpgate status": rtt 0s for every
// uplink; "dpgate device show": rtt_ms 0).
func TestAPIRepliesReadBack(t *testing.T) {
	for _, v := range []any{&Status{}, &DeviceReply{}, &push.DeviceStatus{}, &DeviceList{}, &PushReply{}, &BulkReply{}, &store.Report{}, &wake.Result{}} {
		fill(t, reflect.ValueOf(v).Elem(), 0)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		back := reflect.New(reflect.TypeOf(v).Elem())
		if err := json.Unmarshal(b, back.Interface()); err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		if !reflect.DeepEqual(back.Interface(), v) {
			t.Errorf("%T read back\n%+v\nwant\n%+v\nfrom %s", v, back.Elem().Interface(), reflect.ValueOf(v).Elem().Interface(), b)
		}
	}
}

// fill sets every exported field of v (recursively) to a value that is
// not the zero value and survives JSON: strings, whole microseconds for
// durations, times in UTC, one element in each slice and map.
func fill(t *testing.T, v reflect.Value, depth int) {
	if depth > 8 {
		return
	}
	switch v.Type() {
	case reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Date(2026, 12, 7, 9, 21, 49, 656575643, time.UTC)))
		return
	case reflect.TypeFor[time.Duration]():
		v.SetInt(int64(3249 * time.Microsecond))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(0.5)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), depth+1)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 { // []byte: base64
			v.SetBytes([]byte{1, 2})
			return
		}
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(t, v.Index(0), depth+1)
	case reflect.Array:
		for i := range v.Len() {
			fill(t, v.Index(i), depth+1)
		}
	case reflect.Map:
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k, depth+1)
		fill(t, e, depth+1)
		v.Set(reflect.MakeMap(v.Type()))
		v.SetMapIndex(k, e)
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				fill(t, v.Field(i), depth+1)
			}
		}
	case reflect.Interface:
		// left nil: a client cannot know the type to decode into
	default:
		t.Fatalf("fill: %s", v.Type())
	}
}
