package store

import bolt "go.etcd.io/bbolt"

var bucketCredentials = []byte("credentials")

// PutCredential stores an encrypted credential under its scope.
func (s *Store) PutCredential(scope string, encrypted []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketCredentials)
		if err != nil {
			return err
		}
		return b.Put([]byte(scope), encrypted)
	})
}

// DeleteCredential removes a credential.
func (s *Store) DeleteCredential(scope string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(scope))
	})
}

// Credentials returns every encrypted credential by scope.
func (s *Store) Credentials() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			out[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	return out, err
}
