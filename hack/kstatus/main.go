// kstatus: computes the kstatus status (what Flux's wait and health checks use) of Kubernetes
// objects with the real library, sigs.k8s.io/cli-utils/pkg/kstatus/status.
//
// Reads one JSON object per line on stdin; prints one JSON line per object:
// {"status":"Current","message":"..."}. Built by hack/build-binaries.sh; used by the tests.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		obj := map[string]interface{}{}
		// apimachinery's decoder: whole numbers become int64, as kstatus expects.
		if err := utiljson.Unmarshal(in.Bytes(), &obj); err != nil {
			fmt.Fprintln(os.Stderr, "bad input:", err)
			os.Exit(2)
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			_ = out.Encode(map[string]string{"status": "Error", "message": err.Error()})
			continue
		}
		_ = out.Encode(map[string]string{"status": res.Status.String(), "message": res.Message})
	}
}
