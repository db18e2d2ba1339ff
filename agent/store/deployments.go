package store

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

var bucketDeployments = []byte("deployments")

// Deployment is a desired deployment.
type Deployment struct {
	Spec    []byte `json:"spec"`              // protobuf DeploymentSpec
	Stopped bool   `json:"stopped,omitempty"` // stopped by command; stays stopped across restarts
	// ImageID and PreviousImageID are the engine's ids of the images the
	// current and the previous revision ran; image GC keeps both.
	ImageID         string `json:"imageId,omitempty"`
	PreviousImageID string `json:"previousImageId,omitempty"`
	// StoppedServices are an application's services stopped by command
	// (the whole application: Stopped); they stay stopped across restarts.
	StoppedServices []string `json:"stoppedServices,omitempty"`
	// ImageIDs and PreviousImageIDs are the images an application's
	// services ran in the current and the previous revision (a single
	// container's are ImageID and PreviousImageID); image GC keeps them.
	ImageIDs         []string `json:"imageIds,omitempty"`
	PreviousImageIDs []string `json:"previousImageIds,omitempty"`
}

var bucketImages = []byte("images")

// pulledImage is the stored record of an image the agent pulled. Agents
// before it stored the bare reference of every image a deployment used,
// pulled or not: such a record still reads, as an image of unknown origin
// that PulledImages leaves out.
type pulledImage struct {
	Ref    string `json:"ref"`
	Pulled bool   `json:"pulled"`
}

// TrackPulledImage records that the agent pulled the image with this
// engine id (ref for humans); image GC removes only these.
func (s *Store) TrackPulledImage(id, ref string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketImages)
		if err != nil {
			return err
		}
		return putJSON(b, id, pulledImage{Ref: ref, Pulled: true})
	})
}

// PulledImages returns the images the agent pulled, id to reference.
func (s *Store) PulledImages() (map[string]string, error) {
	out := map[string]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var img pulledImage
			if json.Unmarshal(v, &img) == nil && img.Pulled {
				out[string(k)] = img.Ref
			}
			return nil
		})
	})
	return out, err
}

// UntrackImage forgets an image.
func (s *Store) UntrackImage(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(id))
	})
}

// PutDeployment stores the desired state of a deployment.
func (s *Store) PutDeployment(name string, d Deployment) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketDeployments)
		if err != nil {
			return err
		}
		return putJSON(b, name, d)
	})
}

// GetDeployment returns the desired state of a deployment.
func (s *Store) GetDeployment(name string) (Deployment, bool, error) {
	var d Deployment
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDeployments)
		if b == nil {
			return nil
		}
		raw := b.Get([]byte(name))
		if raw == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(raw, &d)
	})
	return d, ok, err
}

// Deployments returns every desired deployment by name.
func (s *Store) Deployments() (map[string]Deployment, error) {
	out := map[string]Deployment{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDeployments)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var d Deployment
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out[string(k)] = d
			return nil
		})
	})
	return out, err
}

// DeleteDeployment removes a desired deployment.
func (s *Store) DeleteDeployment(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDeployments)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(name))
	})
}

var bucketStaged = []byte("staged")

// Staged is an image prefetched for a deployment: image GC keeps it until
// a deploy of that deployment has run.
type Staged struct {
	ID  string `json:"id"`
	Ref string `json:"ref"`
}

// StageImage records the image prefetched for deployment name, replacing
// an earlier one.
func (s *Store) StageImage(name string, img Staged) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketStaged)
		if err != nil {
			return err
		}
		return putJSON(b, name, img)
	})
}

// StagedImages returns the prefetched images by deployment name.
func (s *Store) StagedImages() (map[string]Staged, error) {
	out := map[string]Staged{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStaged)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var img Staged
			if json.Unmarshal(v, &img) == nil {
				out[string(k)] = img
			}
			return nil
		})
	})
	return out, err
}

// UnstageImage forgets deployment name's prefetched image.
func (s *Store) UnstageImage(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStaged)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(name))
	})
}
