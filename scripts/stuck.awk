# stuck.awk: where a test still running at a timeout waits, from the
# goroutine dump `go test` prints with its "test timed out" panic.
#
# A test's own goroutine runs testing.tRunner; of those, the ones with a
# frame of this module's code are printed, one line a frame (the function,
# then its file's base name and line), runtime and testing frames left out,
# under "== stuck: goroutine N [state, how long]". The goroutine's state
# says what it waits on (chan receive, IO wait, select) and its frames
# where: in the test's body, or in a t.Cleanup. Printed last, so that it is
# on the part of a CI page that shows an output's end.
/^panic: test timed out/ { dump = 1 }
!dump { next }
/^goroutine [0-9]+ \[/ { head = $0; body = ""; ours = 0; runner = 0; fn = ""; next }
/^$/ { flush(); next }
/^\t/ {
	if (fn == "") next
	file = $1; sub(/.*\//, "", file)
	if (fn !~ /^(runtime|testing|internal\/|sync|reflect)[.\/]/) body = body "  " fn "  " file "\n"
	fn = ""
	next
}
{
	fn = $0; sub(/\([^()]*\)$/, "()", fn)
	sub(/^github\.com\/fleet-agent\/fleet\//, "", fn)
	if ($0 ~ /^testing\.tRunner/) runner = 1
	if ($0 ~ /^github\.com\/fleet-agent\/fleet\//) ours = 1
}
END { flush() }
function flush() {
	if (head != "" && ours && runner) printf "== stuck: %s\n%s", head, body
	head = ""
}
