package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	bbolt "go.etcd.io/bbolt"
)

var retainedBucket = []byte("retained")

// retainLogMax is the size at which the log is applied to the retained
// file and emptied: about 2,500 status messages.
const retainLogMax = 1 << 20

// retainLog is the write-ahead log of the retained file (rdb): each batch
// of retained messages is appended to it in one write, which is all an
// acknowledgement waits for (what reached the OS survives the broker's
// crash), and the batches are applied to rdb in one transaction when the
// log passes max bytes (and on close and open), after which it starts
// again empty. Writing the batches to rdb itself cost a B+tree page
// rewritten per message (docs/benchmarks.md, issue 15).
//
// A record is its body's length and CRC-32C (4 bytes each, big-endian),
// then the body: the topic's length (2 bytes), the topic, and the value
// rdb holds for it (a marshalled storage.Message), or nothing for a topic
// whose retained message is deleted. A record cut short or corrupt ends
// the log: only a write that never finished, whose batch nobody
// acknowledged, leaves one.
type retainLog struct {
	f     *os.File
	rdb   *bbolt.DB
	max   int64
	size  int64
	dirty map[string][]byte // the latest value per topic since rdb was written; nil deletes
	err   error             // a log that could not be repaired after a failed write
	log   *slog.Logger
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// openRetainLog opens the log at path and applies what it holds to rdb.
func openRetainLog(rdb *bbolt.DB, path string, max int64) (*retainLog, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	l := &retainLog{f: f, rdb: rdb, max: max, size: int64(len(data)), dirty: map[string][]byte{}, log: slog.New(slog.DiscardHandler)}
	for len(data) > 0 {
		topic, value, rest, ok := readRetainRecord(data)
		if !ok {
			break
		}
		l.dirty[topic] = value
		data = rest
	}
	if err := l.checkpoint(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// readRetainRecord reads the first record of data.
func readRetainRecord(data []byte) (topic string, value, rest []byte, ok bool) {
	if len(data) < 8 {
		return "", nil, nil, false
	}
	n, sum := binary.BigEndian.Uint32(data), binary.BigEndian.Uint32(data[4:])
	if uint64(n) > uint64(len(data)-8) || n < 2 {
		return "", nil, nil, false
	}
	body := data[8 : 8+n]
	if crc32.Checksum(body, castagnoli) != sum {
		return "", nil, nil, false
	}
	tn := int(binary.BigEndian.Uint16(body))
	if tn > len(body)-2 {
		return "", nil, nil, false
	}
	if value = body[2+tn:]; len(value) == 0 {
		value = nil
	}
	return string(body[2 : 2+tn]), value, data[8+n:], true
}

func appendRetainRecord(buf []byte, topic string, value []byte) []byte {
	n := 2 + len(topic) + len(value)
	start := len(buf)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	buf = binary.BigEndian.AppendUint32(buf, 0)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(topic)))
	buf = append(buf, topic...)
	buf = append(buf, value...)
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+8:], castagnoli))
	return buf
}

// write appends a batch in one write; it is a retainWriter's write.
func (l *retainLog) write(ops map[string]retainOp) error {
	if l.err != nil {
		return l.err
	}
	var buf []byte
	values := make(map[string][]byte, len(ops))
	for topic, op := range ops {
		value, err := retainedValue(topic, op)
		if err != nil {
			return err
		}
		values[topic] = value
		buf = appendRetainRecord(buf, topic, value)
	}
	if _, err := l.f.Write(buf); err != nil {
		// Cut what was written of the batch, lest the rest of the log
		// be read as following a corrupt record.
		if terr := l.f.Truncate(l.size); terr != nil {
			l.err = fmt.Errorf("retained log: %w (and cut: %w)", err, terr)
		}
		return fmt.Errorf("retained log: %w", err)
	}
	l.size += int64(len(buf))
	for topic, value := range values {
		l.dirty[topic] = value
	}
	if l.size >= l.max {
		// The batch is in the log: a failed checkpoint fails no one (the
		// log grows and the next batch tries again).
		if err := l.checkpoint(); err != nil {
			l.log.Error("retained messages not applied to the retained file; the log keeps them", "log_bytes", l.size, "err", err)
		}
	}
	return nil
}

// checkpoint writes what the log holds to rdb and empties it. A failure
// keeps both: the log still holds every batch.
func (l *retainLog) checkpoint() error {
	if len(l.dirty) > 0 {
		err := l.rdb.Update(func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(retainedBucket)
			if err != nil {
				return err
			}
			for topic, value := range l.dirty {
				if value == nil {
					err = b.Delete([]byte(topic))
				} else {
					err = b.Put([]byte(topic), value)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("retained file: %d messages: %w", len(l.dirty), err)
		}
		l.dirty = map[string][]byte{}
	}
	if l.size == 0 {
		return nil
	}
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("retained log: %w", err)
	}
	l.size = 0
	return nil
}

// Close applies the log to rdb and closes it.
func (l *retainLog) Close() error {
	return errors.Join(l.checkpoint(), l.f.Close())
}

// retainedValue is what rdb holds for op: nil when the topic's retained
// message is deleted.
func retainedValue(topic string, op retainOp) ([]byte, error) {
	if op.r == -1 || len(op.pk.Payload) == 0 {
		return nil, nil
	}
	client := ""
	if op.cl != nil {
		client = op.cl.ID
	}
	props := op.pk.Properties.Copy(false)
	m := storage.Message{ID: storage.RetainedKey + "_" + topic, T: storage.RetainedKey, FixedHeader: op.pk.FixedHeader,
		TopicName: topic, Payload: op.pk.Payload, Created: op.pk.Created, Client: client, Origin: op.pk.Origin,
		Properties: storage.MessageProperties{PayloadFormat: props.PayloadFormat, MessageExpiryInterval: props.MessageExpiryInterval,
			ContentType: props.ContentType, ResponseTopic: props.ResponseTopic, CorrelationData: props.CorrelationData,
			User: props.User}}
	return m.MarshalBinary()
}
