#!/usr/bin/env python3
"""Writes tests/corpus/generated/NNN.Dockerfile: malformed (and some valid)
Dockerfiles for tests/corpus.rs, deterministically (same seed, same files).

Each file is a small valid Dockerfile (no RUN, no image but scratch) put
through one to three mutations: characters deleted, inserted from a hostile
alphabet, lines duplicated, swapped or truncated, JSON forms unbalanced,
flags mangled, expansions nested, heredocs unterminated, directives misplaced.

Run from the repository root: python3 tests/corpus/generate.py
"""
import os
import random

COUNT = 300
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated")

BASES = [
    "FROM scratch\nCOPY Dockerfile /d\n",
    "FROM scratch AS a\nARG V=1\nENV X=$V Y=${V:-2}\nLABEL k=\"v w\"\nWORKDIR /w/$V\nCOPY Dockerfile ./\n",
    "ARG BASE=scratch\nFROM ${BASE}\nARG A B=2\nENV P=/p\nWORKDIR $P\nCOPY --chmod=0644 Dockerfile .\n",
    "FROM scratch AS one\nCOPY Dockerfile /one\nFROM scratch\nCOPY --from=one /one /two\nCMD [\"/two\"]\n",
    "FROM scratch\nEXPOSE 80/tcp 443\nVOLUME [\"/data\"]\nUSER 1000:1000\nSTOPSIGNAL SIGTERM\n",
    "FROM scratch\nENTRYPOINT [\"/bin/app\", \"--flag\"]\nCMD run\nSHELL [\"/bin/sh\", \"-c\"]\n",
    "FROM scratch\nHEALTHCHECK --interval=5s --timeout=3s CMD [\"/check\"]\nONBUILD COPY . /\n",
    "FROM scratch\nCOPY <<EOF /greeting\nhello ${NAME:-world}\nEOF\n",
    "# escape=`\nFROM scratch\nENV A=a`\n    B=b\nCOPY Dockerfile /x\n",
    "FROM scratch\nADD --chown=1:2 Dockerfile /a/\nLABEL a=1 \\\n      b=2\n",
    "FROM scratch AS base\nARG N\nFROM base AS next\nENV M=${N:+set}\nCOPY --link Dockerfile /\n",
    "FROM scratch\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nCOPY [\"Dockerfile\", \"/q/\"]\n",
]

NASTY = [
    "$", "${", "}", "${A", "${A:-", "${A/", "${A//x/", "${A#", "${A%%", "${:}", "${A:?}",
    "\"", "'", "\\", "`", "[", "]", "[\"", "\",", "{", "\n", "\r\n", "\t", " ", "\\\n",
    "\x00", "\x1b[31m", "\u202e", "\ufeff", "é", "名前", "\U0001f600",
    "--", "--from=", "--chown=", "--chmod=999", "--mount=type=bogus", "--link=maybe",
    "--interval=-1s", "--platform=", "=", "==", "AS", " AS ", "#", "# escape=x\n",
    "<<EOF", "<<-EOF\n", "<<'EOF'", "FROM", "COPY", "RUN", "ONBUILD ONBUILD", "MAINTAINER",
    "0" * 40, "9" * 20, "/" * 50, "../" * 20, "-" * 30,
]

INSTRUCTIONS = [
    "FROM", "ARG", "ENV", "LABEL", "WORKDIR", "COPY", "ADD", "EXPOSE", "VOLUME", "USER",
    "CMD", "ENTRYPOINT", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "ONBUILD", "MAINTAINER",
    "FORM", "COPPY", "env", "from",
]


def mutate(rng, text):
    kind = rng.randrange(14)
    lines = text.split("\n")
    if kind == 0 and text:  # delete a run of characters
        i = rng.randrange(len(text))
        return text[:i] + text[i + rng.randint(1, 8):]
    if kind == 1:  # insert a hostile token
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(NASTY) + text[i:]
    if kind == 2:  # truncate
        return text[: rng.randrange(len(text) + 1)]
    if kind == 3 and len(lines) > 1:  # swap two lines
        a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[a], lines[b] = lines[b], lines[a]
        return "\n".join(lines)
    if kind == 4:  # duplicate a line many times
        i = rng.randrange(len(lines))
        lines[i:i] = [lines[i]] * rng.randint(2, 200)
        return "\n".join(lines)
    if kind == 5:  # an instruction with garbage arguments
        i = rng.randrange(len(lines) + 1)
        args = "".join(rng.choice(NASTY) for _ in range(rng.randint(0, 6)))
        lines.insert(i, rng.choice(INSTRUCTIONS) + " " + args)
        return "\n".join(lines)
    if kind == 6:  # deep nesting of ${...}
        depth = rng.choice([3, 30, 63, 64, 65, 200])
        word = "${A:-" * depth + "x" + "}" * rng.choice([depth, depth - 1, 0])
        return text + "ENV Z=" + word + "\n"
    if kind == 7:  # unbalanced JSON form
        return text + rng.choice(["CMD [\"a\", \"b\"\n", "ENTRYPOINT [\"a\",]\n", "SHELL []\n",
                                  "VOLUME [\"/v\"\n", "COPY [\"Dockerfile\" \"/x\"]\n", "CMD [1, 2]\n"])
    if kind == 8:  # heredoc trouble
        return text + rng.choice(["COPY <<EOF /x\nno end\n", "COPY <<EOF <<EOF2 /x\nEOF\n",
                                  "COPY <<\"E F\" /x\nE F\n", "RUN <<EOF\n", "COPY <<EOF\nEOF\n"])
    if kind == 9:  # misplaced or strange directives
        return rng.choice(["# escape=\n", "# escape=ab\n", "# syntax=docker/dockerfile:1\n# escape=`\n",
                           "\n# escape=`\n", "#escape=\\\\\n"]) + text
    if kind == 10:  # line continuation at the very end / only continuations
        return text.rstrip("\n") + rng.choice([" \\", " \\\n\\\n", "\\\n\n\n", " `"])
    if kind == 11:  # mangled flags
        flag = rng.choice(["--from", "--chown", "--chmod", "--link", "--parents", "--exclude",
                           "--checksum", "--keep-git-dir", "--platform", "--network", "--bogus"])
        value = rng.choice(["", "=", "=x", "=0", "=-1", "=${X", "=a=b", "=" + "z" * 300])
        return text + rng.choice(["COPY ", "ADD ", "FROM "]) + flag + value + " Dockerfile /x\n"
    if kind == 12:  # control characters and CR line ends
        return text.replace("\n", rng.choice(["\r\n", "\r", "\n\x0c", "\n\x0b"]))
    # stages referring to each other, missing or duplicated
    return text + rng.choice(["FROM missing-stage-zz AS z\nCOPY --from=nowhere /a /b\n",
                              "FROM scratch AS a\nFROM a AS a\n",
                              "FROM scratch AS 9bad\n", "FROM scratch AS UPPER\nCOPY --from=upper / /\n",
                              "FROM scratch AS x\nCOPY --from=x / /\n"])


def main():
    rng = random.Random(14)
    os.makedirs(OUT, exist_ok=True)
    for n in range(COUNT):
        text = rng.choice(BASES)
        for _ in range(rng.randint(1, 3)):
            text = mutate(rng, text)
        with open(os.path.join(OUT, f"{n:03}.Dockerfile"), "w", encoding="utf-8", newline="") as f:
            f.write(text)


if __name__ == "__main__":
    main()
