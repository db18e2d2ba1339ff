# said.awk: what each failed test said itself, from `go test -v` output.
#
# For each top-level test that failed, its last 12 lines of its own
# (t.Error, t.Fatal, t.Log: a "file.go:line: " prefix, its subtests'
# included), under "== TestName said:". The rest of a test's output (a
# broker's or a process's logs) is left out, so that these lines, printed
# last, are on the part of a CI page that shows an output's end.
/^=== RUN   [^\/]+$/ { n = 0; name = $3 }
/^ +[A-Za-z0-9_.-]+\.go:[0-9]+: / { line[n % 12] = $0; n++ }
/^--- FAIL: / && name != "" {
	printf "== %s said:\n", name
	for (i = (n > 12 ? n - 12 : 0); i < n; i++) print line[i % 12]
	n = 0; name = ""
}
/^--- (PASS|SKIP): / { n = 0; name = "" }
