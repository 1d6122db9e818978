package chart

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with continuation lines joined.
type instruction struct {
	line    int
	keyword string // upper case
	args    string
}

// stage is one FROM and the instructions up to the next.
type stage struct {
	from   instruction
	name   string
	instrs []instruction
}

// parseDockerfile splits a Dockerfile into the instructions before the first
// FROM (global ARGs) and the stages. It knows only what this project's
// Dockerfile uses: comments, blank lines, backslash continuations.
func parseDockerfile(t *testing.T, data []byte) (global []instruction, stages []stage) {
	t.Helper()
	var instrs []instruction
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur strings.Builder
	start := 0
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		kw, args, _ := strings.Cut(cur.String(), " ")
		instrs = append(instrs, instruction{line: start, keyword: strings.ToUpper(kw), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile ends inside a continued instruction (line %d)", start)
	}
	for _, in := range instrs {
		if in.keyword == "FROM" {
			st := stage{from: in}
			f := strings.Fields(in.args)
			if len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				st.name = f[len(f)-1]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			global = append(global, in)
		} else {
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	return global, stages
}

// argDefaults returns the ARGs declared by instrs with their defaults.
func argDefaults(instrs []instruction) map[string]string {
	m := map[string]string{}
	for _, in := range instrs {
		if in.keyword != "ARG" {
			continue
		}
		for _, a := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(a, "=")
			m[k] = v
		}
	}
	return m
}

// varRef matches ${VAR} and $VAR.
var varRef = regexp.MustCompile(`\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))`)

// varsIn returns the names of the variables s refers to.
func varsIn(s string) []string {
	var names []string
	for _, m := range varRef.FindAllStringSubmatch(s, -1) {
		names = append(names, m[1]+m[2])
	}
	return names
}

// expand substitutes ${VAR} and $VAR from vars.
func expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		return vars[varsIn(m)[0]]
	})
}

// automaticArgs are set by BuildKit in the global scope (usable in FROM) without
// being declared.
var automaticArgs = []string{"BUILDPLATFORM", "TARGETPLATFORM", "BUILDOS", "BUILDARCH", "TARGETOS", "TARGETARCH"}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("# syntax=docker/dockerfile:1\n")) {
		t.Error("the first line should pin the frontend: # syntax=docker/dockerfile:1")
	}
	global, stages := parseDockerfile(t, data)
	for _, in := range global {
		if in.keyword != "ARG" {
			t.Errorf("line %d: only ARG may come before the first FROM, got %s", in.line, in.keyword)
		}
	}
	gargs := argDefaults(global)
	if len(stages) != 2 || stages[0].name != "build" {
		t.Fatalf("want two stages, the first named build; got %d", len(stages))
	}
	build, runtime := stages[0], stages[1]

	// FROM lines see only global ARGs (and BuildKit's platform ARGs).
	for _, st := range stages {
		for _, v := range varsIn(st.from.args) {
			if _, ok := gargs[v]; !ok && !slices.Contains(automaticArgs, v) {
				t.Errorf("line %d: FROM uses $%s, which is not a global ARG", st.from.line, v)
			}
		}
	}
	if img := expand(strings.Fields(runtime.from.args)[0], gargs); img != "debian:bookworm-slim" {
		t.Errorf("runtime base image %s, want debian:bookworm-slim", img)
	}
	if img := expand(lastNonAS(build.from.args), gargs); !strings.HasPrefix(img, "golang:") {
		t.Errorf("build stage from %s, want golang", img)
	}
	// The Go of the image is the main module's.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goDirective := ""
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod); m != nil {
		goDirective = string(m[1])
	}
	if goDirective == "" || goDirective != gargs["GO_VERSION"] {
		t.Errorf("GO_VERSION=%s, want the go directive of go.mod (%q)", gargs["GO_VERSION"], goDirective)
	}

	// Inside a stage, a variable must be declared in that stage (ARG or ENV): a
	// global ARG is not visible there unless re-declared.
	for _, st := range stages {
		declared := map[string]bool{}
		for _, in := range st.instrs {
			if in.keyword != "ARG" && in.keyword != "ENV" {
				for _, v := range varsIn(in.args) {
					if !declared[v] {
						t.Errorf("line %d: %s uses $%s, not declared in stage %q", in.line, in.keyword, v, st.name)
					}
				}
			}
			if in.keyword == "ARG" || in.keyword == "ENV" {
				for _, a := range strings.Fields(in.args) {
					k, _, _ := strings.Cut(a, "=")
					declared[k] = true
				}
			}
		}
	}

	// The build: a static, trimmed binary with the version from the build argument.
	bargs := argDefaults(build.instrs)
	if _, ok := bargs["VERSION"]; !ok {
		t.Error("build stage: no ARG VERSION")
	}
	goBuild := findRun(build.instrs, "go build")
	for _, want := range []string{
		"CGO_ENABLED=0", "-trimpath",
		"-X github.com/csi-cache/csi-cache/internal/version.Version=${VERSION}",
		"-X github.com/csi-cache/csi-cache/internal/version.Commit=${COMMIT}",
		"./cmd/csi-cache",
	} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("build stage: the go build command lacks %q:\n%s", want, goBuild)
		}
	}
	for _, name := range []string{"Version", "Commit"} {
		if !declaresVar(t, filepath.Join(repoRoot, "internal", "version", "version.go"), name) {
			t.Errorf("internal/version has no var %s for -ldflags -X", name)
		}
	}

	// The runtime: what the plugin executes, labels, the binary from the build.
	install := findRun(runtime.instrs, "apt-get install")
	for _, pkg := range []string{"e2fsprogs", "xfsprogs", "util-linux", "mount", "kmod"} {
		if !slices.Contains(strings.Fields(install), pkg) {
			t.Errorf("runtime stage does not install %s", pkg)
		}
	}
	if !strings.Contains(install, "--no-install-recommends") || !strings.Contains(install, "rm -rf /var/lib/apt/lists") {
		t.Error("runtime stage: apt-get install without --no-install-recommends or without cleaning the lists")
	}
	var labels string
	for _, in := range runtime.instrs {
		if in.keyword == "LABEL" {
			labels += in.args + " "
		}
	}
	for _, want := range []string{
		`org.opencontainers.image.title=`, `org.opencontainers.image.source=`, `org.opencontainers.image.licenses="Apache-2.0"`,
		`org.opencontainers.image.version="${VERSION}"`, `org.opencontainers.image.revision="${COMMIT}"`,
	} {
		if !strings.Contains(labels, want) {
			t.Errorf("runtime stage: no label %s", want)
		}
	}
	var copied, entrypoint string
	for _, in := range runtime.instrs {
		switch in.keyword {
		case "COPY":
			if f := strings.Fields(in.args); len(f) == 3 && f[0] == "--from="+build.name {
				copied = f[2]
			}
		case "ENTRYPOINT":
			entrypoint = in.args
		}
	}
	if copied == "" || entrypoint != `["`+copied+`"]` {
		t.Errorf("runtime: COPY --from=%s to %q, ENTRYPOINT %s: want the copied binary as exec-form entrypoint", build.name, copied, entrypoint)
	}
}

func lastNonAS(from string) string {
	f := strings.Fields(from)
	for i := len(f) - 1; i >= 0; i-- {
		if !strings.EqualFold(f[i], "AS") && (i == 0 || !strings.EqualFold(f[i-1], "AS")) && !strings.HasPrefix(f[i], "--") {
			return f[i]
		}
	}
	return ""
}

func findRun(instrs []instruction, contains string) string {
	for _, in := range instrs {
		if in.keyword == "RUN" && strings.Contains(in.args, contains) {
			return in.args
		}
	}
	return ""
}

// declaresVar reports whether a Go file declares a package-level var name.
func declaresVar(t *testing.T, file, name string) bool {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`(?m)^var ` + name + ` = `).Match(data)
}
