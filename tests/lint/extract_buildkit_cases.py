#!/usr/bin/env python3
"""Turns the assertions of BuildKit's lint tests (frontend/dockerfile/
dockerfile_check_test.go) into data: tests/lint/buildkit_cases.json.

Each case is one `checkLinterWarnings` call: the Dockerfile, the
.dockerignore, the build args (`build-arg:NAME` frontend attributes), whether
BuildKit fails the build (BuildErr), and the warnings it expects (rule name,
detail, line). A case whose Dockerfile or a detail is computed (fmt.Sprintf,
integration.UnixOrWindows, a loop) is recorded with `skipped` and the reason.
No BuildKit code is copied: this reads Go literals only.

Usage: extract_buildkit_cases.py [GIT_DIR] > tests/lint/buildkit_cases.json
(GIT_DIR defaults to the fetched snapshot /work/.mirror/moby+buildkit/repo).
"""
import json
import re
import subprocess
import sys

GIT_DIR = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/moby+buildkit/repo"
PATH = "frontend/dockerfile/dockerfile_check_test.go"


def tokens(src):
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
        elif src.startswith("//", i):
            i = src.find("\n", i)
            i = n if i < 0 else i
        elif c == "`":
            j = src.index("`", i + 1)
            yield ("str", src[i + 1 : j])
            i = j + 1
        elif c == '"':
            j = i + 1
            while src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            yield ("str", json.loads(src[i : j + 1]))
            i = j + 1
        elif c.isalnum() or c == "_":
            j = i
            while j < n and (src[j].isalnum() or src[j] in "_."):
                j += 1
            yield ("id", src[i:j])
            i = j
        else:
            if src.startswith(":=", i):
                yield ("op", ":=")
                i += 2
            else:
                yield ("op", c)
                i += 1


class Computed(Exception):
    pass


class Parser:
    def __init__(self, toks, env):
        self.t = toks
        self.i = 0
        self.env = env

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else ("eof", "")

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, v):
        tok = self.next()
        if tok[1] != v:
            raise ValueError(f"expected {v}, got {tok}")

    def skip_balanced(self):
        depth = 0
        while True:
            tok = self.next()
            if tok[0] == "op" and tok[1] in "({[":
                depth += 1
            elif tok[0] == "op" and tok[1] in ")}]":
                depth -= 1
                if depth == 0:
                    return

    def value(self):
        kind, v = self.peek()
        if kind == "str":
            self.next()
            return v
        if kind == "op" and v == "&":
            self.next()
            return self.value()
        if kind == "op" and v == "{":
            return self.composite()
        if kind == "op" and v == "[":
            # []T{...} or []byte(...)
            self.next()
            self.expect("]")
            typ = self.next()[1]
            if self.peek()[1] == "(":
                self.next()
                inner = self.value()
                self.expect(")")
                return inner
            return self.composite()
        if kind == "id" and v == "map":
            while self.peek()[1] != "{":
                self.next()
            return self.composite()
        if kind == "id":
            self.next()
            if self.peek()[1] == "(" and v in PURE_CALLS:
                return PURE_CALLS[v](self.call_args())
            if self.peek()[1] == "(":
                self.i -= 1
                self.next()
                self.skip_balanced()
                raise Computed(v)
            if self.peek()[1] == "{":
                return self.composite()
            if v.isdigit():
                return int(v)
            if v in ("true", "false"):
                return v == "true"
            if v == "nil":
                return None
            if v in self.env:
                return self.env[v]
            raise Computed(v)
        raise ValueError(f"unexpected {self.peek()}")

    def call_args(self):
        # `(a, b, ...)` of a call whose arguments are all known values.
        self.expect("(")
        args = []
        while self.peek()[1] != ")":
            args.append(self.value())
            if self.peek()[1] == ",":
                self.next()
        self.expect(")")
        return args

    def composite(self):
        self.expect("{")
        items, keyed = [], {}
        while self.peek()[1] != "}":
            start = self.i
            first = self.value_or_computed()
            if self.peek()[1] == ":":
                self.next()
                keyed[first] = self.value_or_computed()
            else:
                items.append(first)
            if self.peek()[1] == ",":
                self.next()
        self.expect("}")
        return keyed if keyed else items

    def value_or_computed(self):
        # A key (an identifier) or a value; computed values become a marker.
        kind, v = self.peek()
        if kind == "id" and self.peek(1)[1] == ":":
            self.next()
            return v
        try:
            return self.value()
        except Computed as e:
            return {"__computed__": str(e)}


def go_format(fmt, args):
    """Go's fmt verbs the tests use: %s, %v, %d, %q (of plain strings), %%."""
    out, args = [], list(args)
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
        elif verb in "svd":
            out.append(str(args.pop(0)))
        elif verb == "q":
            out.append(json.dumps(args.pop(0)))
        else:
            raise Computed("fmt verb %" + verb)
    return "".join(out)


# Calls whose value the script can compute: on Linux, UnixOrWindows is its
# first argument; Sprintf and Appendf format.
PURE_CALLS = {
    "integration.UnixOrWindows": lambda a: a[0],
    "fmt.Sprintf": lambda a: go_format(a[0], a[1:]),
    "fmt.Appendf": lambda a: go_format(a[1], a[2:]),
}


def computed(v):
    if isinstance(v, dict):
        return "__computed__" in v or any(computed(x) for x in v.values())
    if isinstance(v, list):
        return any(computed(x) for x in v)
    return False


def main():
    src = subprocess.run(
        ["git", "--git-dir", GIT_DIR, "show", f"HEAD:{PATH}"],
        check=True, capture_output=True, text=True,
    ).stdout
    commit = subprocess.run(
        ["git", "--git-dir", GIT_DIR, "rev-parse", "HEAD"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    cases = []
    funcs = list(re.finditer(r"^func (test\w+)\(t \*testing\.T", src, re.M))
    for k, f in enumerate(funcs):
        body = src[f.end() : funcs[k + 1].start() if k + 1 < len(funcs) else len(src)]
        toks = list(tokens(body))
        env = {}
        p = Parser(toks, env)
        n = 0
        while p.i < len(toks):
            kind, v = p.peek()
            # Assignments of values the script can compute (the Dockerfile,
            # the ignore file, names such as baseImg) are remembered.
            if kind == "id" and "." not in v and p.peek(1)[1] in ("=", ":="):
                p.i += 2
                start = p.i
                try:
                    env[v] = p.value()
                except (Computed, ValueError, IndexError) as e:
                    env[v] = {"__computed__": str(e)}
                    p.i = start
                continue
            if kind == "id" and v == "checkLinterWarnings":
                p.next()
                p.expect("(")
                while p.peek()[1] != "&":
                    p.next()
                params = p.value_or_computed()
                n += 1
                case = {"test": f.group(1), "case": n}
                df = params.get("Dockerfile")
                ign = params.get("DockerIgnore")
                warnings = params.get("Warnings") or []
                attrs = params.get("FrontendAttrs") or {}
                if computed(df) or computed(ign) or computed(warnings) or computed(attrs) or not isinstance(df, str):
                    case["skipped"] = "computed in Go (fmt, UnixOrWindows or a loop variable)"
                    cases.append(case)
                    continue
                case["dockerfile"] = df
                if ign is not None:
                    case["dockerignore"] = ign
                case["build_args"] = {
                    k[len("build-arg:"):]: v for k, v in attrs.items() if k.startswith("build-arg:")
                }
                other = {k: v for k, v in attrs.items() if not k.startswith("build-arg:")}
                if other:
                    case["frontend_attrs"] = other
                if params.get("BuildErr"):
                    case["build_err"] = params["BuildErr"]
                case["warnings"] = [
                    {"rule": w["RuleName"], "detail": w["Detail"], "line": w["Line"]}
                    for w in warnings
                ]
                cases.append(case)
                continue
            p.next()
    json.dump({"source": f"moby/buildkit {commit} {PATH}", "cases": cases}, sys.stdout, indent=1)
    print()


main()
