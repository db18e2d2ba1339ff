package command

import "errors"

// Refuse makes err's reply REJECTED whatever its code: the command was not
// executed (a logs command for a deployment the gateway does not have is
// NOT_FOUND, and refused, not failed). Nil stays nil.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	return refusal{err}
}

type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

func refused(err error) bool {
	_, ok := errors.AsType[refusal](err)
	return ok
}
