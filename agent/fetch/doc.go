// Package fetch downloads container images into a content-addressed store on
// the gateway, so that a cut link costs the bytes in flight, not the layer
// (issue 14: dockerd restarts a layer from byte zero).
//
// The store is an OCI image layout (go-containerregistry's layout package
// reads it): blobs in blobs/sha256/<hex> and the fetched images in
// index.json, each named by its reference in the
// org.opencontainers.image.ref.name annotation. Downloads in progress live
// beside it in partial/sha256-<hex>; a blob is renamed into blobs/ only once
// its bytes hash to its digest, so whatever is in blobs/ is verified, and a
// manifest is stored only after its config and layers.
//
// Fetcher.Fetch resolves a reference (an index to the platform's manifest)
// with the keychain and transport it is given, then downloads each missing
// blob itself: a partial file resumes with a Range request, a registry that
// ignores Range restarts the blob from zero, a request silent for
// StallTimeout is cancelled and reconnected, and failures are retried with
// back-off until the context ends. A new Fetcher over the same directory
// (after the agent was killed) continues from the partial files.
//
// Housekeeping: Lookup finds the image index.json lists under a
// reference, and Touch marks it used (io.fleet-agent.used, also set when a
// fetch lists it). GC drops the images a keep func refuses and removes the
// blobs no remaining image reaches, manifests read from the store (an
// index keeps those of its children that are there), and the partial files
// of pulls no longer running; a digest whose download holds its lock, a
// blob written after GC started or held by a fetch (Store.hold) stays, and
// index.json never lists an image whose blobs are not all in the store.
// Trim enforces a size cap: garbage first, then the least recently used
// images the keep func refuses, one at a time, never a kept one. Usage is
// the bytes of the blobs and partial files; Missing is what a manifest
// still needs to download, less its partial files: the disk to reserve
// before the first byte.
//
// This is the first slice: nothing in the agent calls it yet.
package fetch
