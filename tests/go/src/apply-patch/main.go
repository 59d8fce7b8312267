// apply-patch applies an AdmissionReview response's JSON Patch to an object the way
// kube-apiserver's mutating webhook dispatcher does: encoding/json decodes the
// response (so `patch` must be base64, the encoding of []byte), evanphx/json-patch
// decodes the patch, an empty patch leaves the object alone, and Patch.Apply runs on
// the object's JSON.
//
//	apply-patch OBJECT.json < review-response.json > patched.json
//
// Built as a module against the version the apiserver uses (tests/cluster/versions.env).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
)

type review struct {
	Response *struct {
		UID       string  `json:"uid"`
		Allowed   bool    `json:"allowed"`
		PatchType *string `json:"patchType"`
		Patch     []byte  `json:"patch"`
	} `json:"response"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "apply-patch: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: apply-patch OBJECT.json < review.json")
	}
	object, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading the review: %v", err)
	}
	var r review
	if err := json.Unmarshal(body, &r); err != nil {
		fail("the review does not decode as the apiserver decodes it: %v", err)
	}
	if r.Response == nil {
		fail("the review has no response")
	}
	if !r.Response.Allowed {
		fail("the review does not allow the object")
	}
	if len(r.Response.Patch) == 0 {
		os.Stdout.Write(object)
		return
	}
	if r.Response.PatchType == nil || *r.Response.PatchType != "JSONPatch" {
		fail("a patch without patchType JSONPatch")
	}
	patch, err := jsonpatch.DecodePatch(r.Response.Patch)
	if err != nil {
		fail("the patch does not decode: %v", err)
	}
	if len(patch) == 0 {
		os.Stdout.Write(object)
		return
	}
	patched, err := patch.Apply(object)
	if err != nil {
		fail("the patch does not apply: %v", err)
	}
	os.Stdout.Write(patched)
}
