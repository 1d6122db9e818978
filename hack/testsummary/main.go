// Command testsummary reads `go test -json` output on stdin, prints the usual
// package lines and the output of failed tests, and ends with one summary line
// "tests: N passed, N failed, N skipped". It exits non-zero when a test or a
// package (build failure, panic outside a test) failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

func main() {
	os.Exit(summarize())
}

func summarize() int {
	var passed, failed, skipped int
	var failedPkgs []string
	output := map[string][]string{} // package/test -> output lines
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			// Not JSON: a build error printed by go test itself.
			fmt.Println(string(line))
			continue
		}
		key := e.Package + "/" + e.Test
		switch e.Action {
		case "output":
			output[key] = append(output[key], e.Output)
			if e.Test == "" && (strings.HasPrefix(e.Output, "ok ") || strings.HasPrefix(e.Output, "FAIL") ||
				strings.HasPrefix(e.Output, "?") || strings.Contains(e.Output, "[build failed]")) {
				fmt.Print(e.Output)
			}
		case "pass":
			if e.Test != "" {
				passed++
			}
			delete(output, key)
		case "skip":
			if e.Test != "" {
				skipped++
			}
			delete(output, key)
		case "fail":
			if e.Test != "" {
				failed++
				fmt.Printf("--- FAIL: %s %s (%.2fs)\n", e.Package, e.Test, e.Elapsed)
				for _, o := range output[key] {
					fmt.Print("    ", o)
				}
			} else {
				failedPkgs = append(failedPkgs, e.Package)
				for _, o := range output[key] {
					if !strings.HasPrefix(o, "FAIL") {
						fmt.Print("    ", o)
					}
				}
			}
			delete(output, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "testsummary: reading input: %v\n", err)
		return 2
	}
	sort.Strings(failedPkgs)
	if len(failedPkgs) > 0 {
		fmt.Printf("failed packages: %s\n", strings.Join(failedPkgs, " "))
	}
	fmt.Printf("tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || len(failedPkgs) > 0 {
		return 1
	}
	return 0
}
