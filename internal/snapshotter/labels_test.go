package snapshotter

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

var (
	dM = digest.FromString("manifest")
	dA = digest.FromString("a")
	dB = digest.FromString("b")
)

func TestParseRequest(t *testing.T) {
	cri := func(over map[string]string) map[string]string {
		l := map[string]string{
			LabelTargetRef: "sha256:chain", LabelImageRef: "registry.test/app:1", LabelManifestDigest: dM.String(),
			LabelLayerDigest: dA.String(), LabelImageLayers: dA.String() + "," + dB.String(),
		}
		for k, v := range over {
			if v == "-" {
				delete(l, k)
			} else {
				l[k] = v
			}
		}
		return l
	}
	for _, tc := range []struct {
		name    string
		labels  map[string]string
		want    Request
		top     bool
		invalid bool
	}{
		{"no labels", nil, Request{}, false, false},
		{"extraction without CRI labels", map[string]string{LabelTargetRef: "c1"}, Request{Target: "c1"}, false, false},
		{"CRI lower layer", cri(nil), Request{Target: "sha256:chain", ImageRef: "registry.test/app:1", ManifestDigest: dM, LayerDigest: dA, Layers: []digest.Digest{dA, dB}}, false, false},
		{"CRI top layer", cri(map[string]string{LabelLayerDigest: dB.String(), LabelImageLayers: dB.String()}),
			Request{Target: "sha256:chain", ImageRef: "registry.test/app:1", ManifestDigest: dM, LayerDigest: dB, Layers: []digest.Digest{dB}}, true, false},
		{"bad manifest digest", cri(map[string]string{LabelManifestDigest: "sha256:xyz"}), Request{}, false, true},
		{"missing layer digest", cri(map[string]string{LabelLayerDigest: "-"}), Request{}, false, true},
		{"empty layers", cri(map[string]string{LabelImageLayers: ""}), Request{}, false, true},
		{"layers not starting at the layer", cri(map[string]string{LabelImageLayers: dB.String()}), Request{}, false, true},
		{"bad layer in list", cri(map[string]string{LabelImageLayers: dA.String() + ",nope"}), Request{}, false, true},
		{"CRI labels without target", cri(map[string]string{LabelTargetRef: "-"}), Request{}, false, true},
		{"target with slash", map[string]string{LabelTargetRef: "a/b"}, Request{}, false, true},
		{"oversized label", cri(map[string]string{LabelImageRef: strings.Repeat("x", maxLabel+1)}), Request{}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest(tc.labels)
			if tc.invalid {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("ParseRequest = %+v, %v; want InvalidArgument", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseRequest (-want +got):\n%s", diff)
			}
			if got.Top() != tc.top {
				t.Errorf("Top() = %v, want %v", got.Top(), tc.top)
			}
		})
	}
}

// FuzzParseRequest: labels come from whoever can call containerd; the
// parser must never panic, and what it accepts must be consistent.
func FuzzParseRequest(f *testing.F) {
	f.Add("sha256:c", "r:1", dM.String(), dA.String(), dA.String()+","+dB.String())
	f.Add("", "", "", "", "")
	f.Add("c", "", dM.String(), "x", ",")
	f.Fuzz(func(t *testing.T, target, ref, md, ld, layers string) {
		r, err := ParseRequest(map[string]string{
			LabelTargetRef: target, LabelImageRef: ref, LabelManifestDigest: md, LabelLayerDigest: ld, LabelImageLayers: layers,
		})
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if r.Labeled() {
			if r.ManifestDigest.Validate() != nil || r.LayerDigest.Validate() != nil || len(r.Layers) == 0 || r.Layers[0] != r.LayerDigest || r.Target == "" {
				t.Fatalf("accepted an inconsistent request %+v", r)
			}
		}
	})
}

func TestFormatStatus(t *testing.T) {
	got := FormatStatus([]SnapshotStatus{
		{Name: "c1", State: "committed", Kind: KindRemote, Image: "default/app", Mount: "/r/mounts/ab"},
		{Name: "c0", State: "committed", Kind: KindRemoteLower, Image: "default/app"},
		{Name: "x", State: "active", Kind: KindLocal},
	})
	want := "containerd snapshots: 1 remote, 1 remote-lower, 0 materialized, 1 local\n" +
		"snapshot c1: committed remote image default/app mounted at /r/mounts/ab\n" +
		"snapshot c0: committed remote-lower image default/app\n"
	if got != want {
		t.Errorf("FormatStatus =\n%s\nwant\n%s", got, want)
	}
}
